// Changing a selector shows the new map at once; the Show button still works without script.
document.querySelectorAll("#platemap-form select").forEach((el) => {
  el.addEventListener("change", () => el.form.submit());
});

// Live run page: the log from the server-sent events, status and progress by polling.
(function () {
  const log = document.getElementById("log");
  if (!log) return;
  const TERMINAL = ["SUCCESS", "FAILURE", "CANCELED"];
  let finished = false;

  function line(e) {
    const li = document.createElement("li");
    const when = (e.timestamp || "").replace("T", " ").slice(0, 19);
    const where = [e.partition, e.asset, e.step_key].filter(Boolean).join(" · ");
    li.textContent = `${when}  ${e.level || ""}  ${e.event_type || ""}  ${where}  ${e.message || ""}`;
    if ((e.level || "").toUpperCase() === "ERROR" || /FAILURE/.test(e.event_type || "")) {
      li.className = "error";
    }
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.appendChild(li);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  const source = new EventSource(log.dataset.events);
  source.addEventListener("log", (ev) => line(JSON.parse(ev.data)));
  source.addEventListener("end", () => {
    source.close();
    document.getElementById("log-state").textContent = "Complete log.";
  });
  source.onerror = () => {
    if (!finished) document.getElementById("log-state").textContent =
      "Log connection interrupted; reload the page to resume.";
    source.close();
  };

  function badge(status) {
    const span = document.createElement("span");
    span.className = "run run-" + status.toLowerCase();
    span.textContent = status;
    return span;
  }

  function show(run) {
    document.getElementById("run-status").replaceChildren(badge(run.status));
    document.getElementById("run-message").textContent = run.message || "";
    const p = run.progress || {};
    document.getElementById("progress").value = run.percent;
    document.getElementById("progress-text").textContent =
      `${p.steps_done || 0} / ${p.steps_total || 0} steps`;
    const body = document.querySelector("#steps tbody");
    body.replaceChildren(...run.steps.map((s) => {
      const tr = document.createElement("tr");
      const cells = [s.assets.join(", "), s.partition || "default", null,
                     s.materialized.join(", ") || "–"];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (i === 2) td.appendChild(badge(s.status));
        else if (i === 1) { const c = document.createElement("code"); c.textContent = text; td.appendChild(c); }
        else td.textContent = text;
        tr.appendChild(td);
      });
      return tr;
    }));
    if (TERMINAL.includes(run.status)) {
      finished = true;
      const when = (run.finished_at || "").replace("T", " ").slice(0, 19);
      document.getElementById("finished").textContent = `finished ${when} UTC`;
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
    }
  }

  async function poll() {
    try {
      const resp = await fetch(log.dataset.status, { credentials: "same-origin" });
      const body = await resp.json();
      if (!resp.ok) {
        document.getElementById("run-message").textContent = "Error: " + (body.detail || resp.status);
      } else {
        show(body);
      }
    } catch (err) {
      document.getElementById("run-message").textContent = "Cannot reach the server: " + err;
    }
    if (!finished) setTimeout(poll, 1000);
  }
  if (!document.querySelector("#run-status .run-success, #run-status .run-failure, #run-status .run-canceled")) {
    setTimeout(poll, 500);
  } else {
    finished = true;
  }
})();

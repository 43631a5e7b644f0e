"""Scale measured per-site costs to a screen: the tables of ``docs/scaling.md``.

Run: ``.venv/bin/python bench/bench_site_costs.py --sites 3 --cycles 12 --json costs.json``
then ``.venv/bin/python bench/scale_screen.py costs.json [--plates 20 ...]``.

Prints, per step, the jobs of a screen, CPU-hours (vCPU-hours on AWS Batch, core-hours
on Slurm), data read and written, and dollars per plate at the prices given (assumed
list prices; check them). A step's per-unit CPU is its measured CPU time minus one
process start (the cheapest catalog step's time, which is nearly all interpreter start-up),
divided by its units; every job then pays one start.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MB = 1e6

# step -> (unit the bench divided by, unit in the screen, jobs per plate key)
UNITS = {
    "inventory": ("once", "plate"),
    "index": ("once", "plate"),
    "illum_cp": ("cp_site", "plate"),
    "illum_sbs": ("sbs_image", "plate_cycle"),
    "corrected_cp": ("cp_site", "well"),
    "aligned_sbs": ("sbs_image", "well"),
    "segmentation": ("cp_site", "well"),
    "barcode_calls": ("sbs_site", "well"),
    "geometry": ("cp_site", "well"),
    "mosaic": ("cp_site", "well"),
    "merge": ("cp_site", "well"),
    "cell_features": ("cp_site", "well"),
    "gene_summary": ("once", "plate"),
}
# What each step reads per unit, as a multiple of one raw image (CP site, SBS image):
# illum and correction read every raw image once; segmentation the two corrected CP
# channels it uses (2 of 3); barcode calling the four base channels of every cycle (4 of
# 5 per SBS image); features the corrected CP site and the SBS cycle-1 nuclear channel.
READS = {
    "illum_cp": ("cp", 1.0),
    "illum_sbs": ("sbs", 1.0),
    "corrected_cp": ("cp", 1.0),
    "aligned_sbs": ("sbs", 1.0),
    "segmentation": ("cp", 2 / 3),
    "barcode_calls": ("sbs", 0.8),  # x cycles
    # the nuclear channel of CP (1 of 3) and of every SBS cycle: about a third of a CP site
    "geometry": ("cp", 1 / 3 + 1 / 3),
    # every corrected CP channel, and the SBS cycles' images scaled into the CP frame
    "mosaic": ("cp", 2.0),
    "merge": ("cp", 0.0),  # tables only
    "cell_features": ("cp", 1.0),
}
# Steps whose output size does not grow with the sites they read.
PER_JOB_OUTPUT = {"illum_cp", "illum_sbs"}
# Spot for the many short, re-run-safe per-well jobs; on-demand for the few long
# per-plate jobs on every well's critical path.
SPOT = {
    "corrected_cp", "aligned_sbs", "segmentation", "barcode_calls", "geometry", "mosaic",
    "merge", "cell_features",
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("costs", help="JSON written by bench_site_costs.py --json")
    ap.add_argument("--plates", type=int, default=20)
    ap.add_argument("--wells", type=int, default=6, help="wells per plate")
    ap.add_argument("--cp-sites", type=int, default=1536, help="CP sites per plate")
    ap.add_argument("--sbs-sites", type=int, default=336, help="SBS sites per plate")
    ap.add_argument("--cycles", type=int, default=12)
    ap.add_argument("--size", type=int, default=1480, help="image side (px)")
    ap.add_argument("--cp-channels", type=int, default=3)
    ap.add_argument("--sbs-channels", type=int, default=5)
    ap.add_argument("--od", type=float, default=0.048, help="on-demand $ per vCPU-hour")
    ap.add_argument("--spot", type=float, default=0.018, help="spot $ per vCPU-hour")
    ap.add_argument("--packing", type=float, default=1.25, help="instance-hours / job-hours")
    args = ap.parse_args()
    data = json.loads(Path(args.costs).read_text())
    if data["cycles"] != args.cycles:
        raise SystemExit(
            f"error: {args.costs} was measured with {data['cycles']} cycles, the screen has "
            f"{args.cycles}: barcode calling scales with cycles, re-run the bench"
        )
    steps = {r["step"]: r for r in data["steps"] if r["step"] != "experiment"}
    once = {"inventory", "index", "experiment"}
    start = min(r["cpu_s"] for r in data["steps"] if r["step"] in once)
    px = args.size * args.size * 2
    raw = {"cp": px * args.cp_channels, "sbs": px * args.sbs_channels}
    units = {
        "once": 1,
        "cp_site": args.cp_sites,
        "sbs_site": args.sbs_sites,
        "sbs_image": args.sbs_sites * args.cycles,
    }
    jobs_per_plate = {"plate": 1, "plate_cycle": args.cycles, "well": args.wells}
    print(
        "| step | jobs / screen | CPU s / unit | unit | CPU-h / plate | CPU-h / screen | "
        "read GB / plate | written GB / plate | capacity | $ / plate |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---|---:|")
    tot = {"h": 0.0, "r": 0.0, "w": 0.0, "usd": 0.0, "jobs": 0}
    for step, (unit, per) in UNITS.items():
        if step not in steps:
            continue  # measured on a shared-grid sample: no geometry, mosaic, merge
        r = steps[step]
        per_unit = max(r["cpu_s"] - start, 0.0) / r["units"]
        n_units = units[unit]
        jobs = jobs_per_plate[per]
        hours = (per_unit * n_units + start * jobs) / 3600
        if step in READS:
            arm, share = READS[step]
            read = raw[arm] * share * n_units * (args.cycles if step == "barcode_calls" else 1)
        else:
            read = 0.0
        if step in PER_JOB_OUTPUT:
            # illumination functions: one set per plate (CP) or per plate x cycle (SBS)
            bench_jobs = data["cycles"] if per == "plate_cycle" else 1
            written = r["written_bytes"] / bench_jobs * jobs
        else:
            written = r["written_bytes"] / r["units"] * n_units
        price = args.spot if step in SPOT else args.od
        usd = hours * args.packing * price
        label = {
            "once": "job",
            "cp_site": "CP site",
            "sbs_site": "SBS site (all cycles)",
            "sbs_image": "SBS site x cycle",
        }[unit]
        print(
            f"| {step} | {jobs * args.plates:,} | {per_unit:.2f} | {label} | {hours:.2f} | "
            f"{hours * args.plates:.1f} | {read / 1e9:.1f} | {written / 1e9:.2f} | "
            f"{'spot' if step in SPOT else 'on-demand'} | {usd:.2f} |"
        )
        tot["h"] += hours
        tot["r"] += read
        tot["w"] += written
        tot["usd"] += usd
        tot["jobs"] += jobs * args.plates
    print(
        f"| **total** | {tot['jobs'] + 1:,} | | | {tot['h']:.1f} | {tot['h'] * args.plates:.0f} | "
        f"{tot['r'] / 1e9:.0f} | {tot['w'] / 1e9:.1f} | | {tot['usd']:.2f} |"
    )
    raw_plate = raw["cp"] * args.cp_sites + raw["sbs"] * args.sbs_sites * args.cycles
    print(
        f"\nraw images per plate: {raw_plate / 1e9:.0f} GB; process start-up "
        f"{start:.2f} CPU-s per job (in the figures above); measured at "
        f"{data['size']} px, {data['sites']} sites, {data['cycles']} cycles"
    )


if __name__ == "__main__":
    main()

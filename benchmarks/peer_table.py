#!/usr/bin/python3
"""peer_table.py: the table of benchmarks/peer_compare.sh, from the runs it lists in index.tsv.

For a python run: the row peer_pytorch.py wrote (result.csv). For an edit-train-gpt run: its
metrics.jsonl (rank 0, one line per step: tokens/s and seconds of the step) over the steps from
--skip on, and the last row of loss.tsv. For both, time.txt: the job's wall, user and system
seconds. A "base" run (only the first --skip steps) gives the start-up CPU cost that its "full"
run's CPU seconds are counted from. Writes OUT/runs.csv, OUT/summary.csv and OUT/table.md.
"""

import argparse
import csv
import json
import math
import os
import statistics

NAMES = {("py", "ddp"): "python DDP", ("py", "diloco"): "python DiLoCo H32", ("edit", "ddp"): "libedit Ddp",
         ("edit", "diloco"): "libedit DiLoCo H32", ("edit", "edit"): "libedit EDiT H32"}
AGAINST = {("edit", "ddp"): ("py", "ddp"), ("edit", "diloco"): ("py", "diloco"), ("edit", "edit"): ("py", "diloco")}


def edit_result(run_dir, skip):
    seconds = tokens = 0.0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if m["step"] >= skip:
                seconds += m["seconds"]
                tokens += m["tokens_per_s"] * m["seconds"]  # tokens of the step, all ranks
    rows = [r.split("\t") for r in open(os.path.join(run_dir, "loss.tsv")) if not r.startswith("#")]
    step, _, train_loss, val_loss = rows[-1][:4]
    steps = int(step) - skip
    if steps <= 0:
        return {"tokens_per_s": math.nan, "mean_step_ms": math.nan, "train_loss": float(train_loss),
                "val_loss": float(val_loss)}
    return {"tokens_per_s": tokens / seconds, "mean_step_ms": 1e3 * seconds / steps,
            "train_loss": float(train_loss), "val_loss": float(val_loss)}


def python_result(run_dir):
    with open(os.path.join(run_dir, "result.csv")) as f:
        row = list(csv.DictReader(f))[-1]
    return {k: float(row[k]) for k in ("tokens_per_s", "mean_step_ms", "train_loss", "val_loss")}


def read_runs(index, skip):
    runs = []
    with open(index) as f:
        for entry in csv.DictReader(f, delimiter="\t"):
            result = python_result(entry["dir"]) if entry["impl"] == "py" else edit_result(entry["dir"], skip)
            wall, user, system = (float(x) for x in open(os.path.join(entry["dir"], "time.txt")).read().split()[-3:])
            runs.append({**entry, **result, "job_wall_s": wall, "job_cpu_s": user + system})
    # CPU seconds of a measured step (both ranks): the full job's minus its base job's, per step.
    base = {(r["round"], r["vocab"], r["impl"], r["strategy"]): r for r in runs if r["kind"] == "base"}
    for r in runs:
        b = base.get((r["round"], r["vocab"], r["impl"], r["strategy"]))
        measured = int(r["steps"]) - skip
        r["cpu_ms_per_step"] = math.nan
        if r["kind"] == "full" and b is not None and measured > 0:
            r["cpu_ms_per_step"] = 1e3 * (r["job_cpu_s"] - b["job_cpu_s"]) / measured
        # tokens of a step, all ranks: tokens/s x seconds per step
        r["tokens_per_cpu_s"] = r["tokens_per_s"] * r["mean_step_ms"] / r["cpu_ms_per_step"]
    return runs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True)
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    runs = read_runs(a.index, a.skip)
    fields = ["round", "vocab", "impl", "strategy", "kind", "steps", "tokens_per_s", "mean_step_ms", "cpu_ms_per_step",
              "tokens_per_cpu_s", "train_loss", "val_loss", "job_wall_s", "job_cpu_s", "load_before", "load_after", "dir"]
    with open(os.path.join(a.out, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)

    full = [r for r in runs if r["kind"] == "full"]
    summary = []
    lines = ["| vocab | run | tokens/s | min - max | vs python | CPU ms/step | tokens/CPU-s | vs python (CPU) "
             "| train loss | val loss | load |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for vocab in dict.fromkeys(r["vocab"] for r in full):
        groups = {key: [r for r in full if r["vocab"] == vocab and (r["impl"], r["strategy"]) == key] for key in NAMES}
        groups = {key: g for key, g in groups.items() if g}
        rate = {key: statistics.median(r["tokens_per_s"] for r in g) for key, g in groups.items()}
        cpu_rate = {key: statistics.median(r["tokens_per_cpu_s"] for r in g) for key, g in groups.items()}
        for key, g in groups.items():
            other = AGAINST.get(key)
            ratio = rate[key] / rate[other] if other in rate else None
            cpu_ratio = cpu_rate[key] / cpu_rate[other] if other in cpu_rate else None
            rates = [r["tokens_per_s"] for r in g]
            row = {"vocab": vocab, "run": NAMES[key], "n": len(g), "tokens_per_s": round(rate[key], 1),
                   "min": round(min(rates), 1), "max": round(max(rates), 1),
                   "vs_python": "" if ratio is None else round(ratio, 3),
                   "cpu_ms_per_step": round(statistics.median(r["cpu_ms_per_step"] for r in g), 1),
                   "tokens_per_cpu_s": round(cpu_rate[key], 1),
                   "vs_python_cpu": "" if cpu_ratio is None else round(cpu_ratio, 3),
                   "vs": "" if other is None else NAMES[other],
                   "train_loss": round(statistics.median(r["train_loss"] for r in g), 4),
                   "val_loss": round(statistics.median(r["val_loss"] for r in g), 4),
                   "load_max": max(float(r[k]) for r in g for k in ("load_before", "load_after"))}
            summary.append(row)
            ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
            cpu_ratio_text = "-" if cpu_ratio is None else f"{cpu_ratio:.2f}x"
            lines.append(f"| {vocab} | {row['run']} | {row['tokens_per_s']:,.0f} | {row['min']:,.0f} - {row['max']:,.0f} "
                         f"| {ratio_text} | {row['cpu_ms_per_step']:,.0f} | {row['tokens_per_cpu_s']:,.0f} "
                         f"| {cpu_ratio_text} | {row['train_loss']:.4f} | {row['val_loss']:.4f} | {row['load_max']:.1f} |")
    with open(os.path.join(a.out, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    table = "\n".join(lines)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print("(medians over the rounds. vs python: libedit Ddp / python DDP, libedit DiLoCo and EDiT / python DiLoCo. "
          "CPU ms/step: user + system CPU of one measured step, both ranks together. load: the highest 1-minute "
          "load average seen around its runs.)")


if __name__ == "__main__":
    main()

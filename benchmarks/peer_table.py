#!/usr/bin/python3
"""peer_table.py: the table of benchmarks/peer_compare.sh, from the runs it lists in index.tsv.

For a python run: the row peer_pytorch.py wrote (result.csv). For an edit-train-gpt run: its
metrics.jsonl (rank 0, one line per step: tokens/s and seconds of the step) over the steps from
--skip on, and the last row of loss.tsv. Writes OUT/runs.csv, OUT/summary.csv and OUT/table.md.
"""

import argparse
import csv
import json
import os
import statistics


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
    return {"tokens_per_s": tokens / seconds, "mean_step_ms": 1e3 * seconds / steps,
            "train_loss": float(train_loss), "val_loss": float(val_loss)}


def python_result(run_dir):
    with open(os.path.join(run_dir, "result.csv")) as f:
        row = list(csv.DictReader(f))[-1]
    return {k: float(row[k]) for k in ("tokens_per_s", "mean_step_ms", "train_loss", "val_loss")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True)
    p.add_argument("--skip", type=int, default=5)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    runs = []
    with open(a.index) as f:
        for entry in csv.DictReader(f, delimiter="\t"):
            result = python_result(entry["dir"]) if entry["impl"] == "py" else edit_result(entry["dir"], a.skip)
            wall, user, system = (float(x) for x in open(os.path.join(entry["dir"], "time.txt")).read().split()[-3:])
            runs.append({**entry, **result, "job_wall_s": wall, "job_cpu_s": user + system})
    fields = ["round", "vocab", "impl", "strategy", "steps", "tokens_per_s", "mean_step_ms", "train_loss",
              "val_loss", "job_wall_s", "job_cpu_s", "load_before", "load_after", "dir"]
    with open(os.path.join(a.out, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)

    names = {("py", "ddp"): "python DDP", ("py", "diloco"): "python DiLoCo H32", ("edit", "ddp"): "libedit Ddp",
             ("edit", "diloco"): "libedit DiLoCo H32", ("edit", "edit"): "libedit EDiT H32"}
    against = {("edit", "ddp"): ("py", "ddp"), ("edit", "diloco"): ("py", "diloco"), ("edit", "edit"): ("py", "diloco")}
    summary, lines = [], []
    lines.append("| vocab | run | tokens/s (median) | min - max | ms/step | vs python | job CPU s | train loss | val loss | load |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for vocab in dict.fromkeys(r["vocab"] for r in runs):
        median = {}
        for key in names:
            mine = [r for r in runs if r["vocab"] == vocab and (r["impl"], r["strategy"]) == key]
            if mine:
                median[key] = statistics.median(r["tokens_per_s"] for r in mine)
        for key, name in names.items():
            mine = [r for r in runs if r["vocab"] == vocab and (r["impl"], r["strategy"]) == key]
            if not mine:
                continue
            rates = [r["tokens_per_s"] for r in mine]
            ratio = median[key] / median[against[key]] if key in against and against[key] in median else None
            loads = [float(r[k]) for r in mine for k in ("load_before", "load_after")]
            row = {"vocab": vocab, "run": name, "n": len(mine), "tokens_per_s": round(median[key], 1),
                   "min": round(min(rates), 1), "max": round(max(rates), 1),
                   "mean_step_ms": round(statistics.median(r["mean_step_ms"] for r in mine), 2),
                   "vs_python": "" if ratio is None else round(ratio, 3),
                   "vs": "" if ratio is None else names[against[key]],
                   "job_cpu_s": round(statistics.median(r["job_cpu_s"] for r in mine), 1),
                   "train_loss": round(statistics.median(r["train_loss"] for r in mine), 4),
                   "val_loss": round(statistics.median(r["val_loss"] for r in mine), 4),
                   "load_max": max(loads)}
            summary.append(row)
            lines.append(f"| {vocab} | {name} | {row['tokens_per_s']:,.0f} | {row['min']:,.0f} - {row['max']:,.0f} | "
                         f"{row['mean_step_ms']:.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} | {row['job_cpu_s']:.1f} | "
                         f"{row['train_loss']:.4f} | {row['val_loss']:.4f} | {row['load_max']:.1f} |")
    with open(os.path.join(a.out, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    table = "\n".join(lines)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print("(vs python: libedit Ddp / python DDP; libedit DiLoCo and EDiT / python DiLoCo. job CPU s: user + "
          "system seconds of the whole job, both ranks, start-up and evaluation included. load: the highest "
          "1-minute load average seen before or after its runs.)")


if __name__ == "__main__":
    main()

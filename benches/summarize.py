#!/usr/bin/env python3
"""Prints the Markdown table of the last `cargo bench --bench fold` run, with each
figure as a ratio against the memcpy of the same bytes measured in that run."""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def mean_ms(path):
    estimates = json.loads((path / "new" / "estimates.json").read_text())
    return estimates["mean"]["point_estimate"] / 1e6


def results():
    """(group, variant, MiB) -> mean milliseconds."""
    found = {}
    for estimates in root.glob("*/**/new/estimates.json"):
        parts = estimates.parent.parent.relative_to(root).parts
        group, rest = parts[0], parts[1:]
        variant = rest[0] if len(rest) == 2 else ""
        mib = int(rest[-1])
        found[(group, variant, mib)] = mean_ms(estimates.parent.parent)
    return found


def main():
    found = results()
    floors = {mib: ms for (g, _, mib), ms in found.items() if g == "memcpy"}
    print("| bench | MiB | ms | MB/s | memcpy ms | throughput vs memcpy |")
    print("|---|---:|---:|---:|---:|---:|")
    for (group, variant, mib), ms in sorted(found.items()):
        name = f"{group}/{variant}" if variant else group
        rate = mib * 1048576 / (ms / 1000) / 1e6
        floor = floors.get(mib)
        ratio = f"{floor / ms * 100:.0f} %" if floor else "n/a"
        print(f"| {name} | {mib} | {ms:.1f} | {rate:.0f} | {floor or 0:.1f} | {ratio} |")


if __name__ == "__main__":
    main()

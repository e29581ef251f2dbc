"""Where a kernel's warps stall, per SASS instruction, from Nsight Compute's source page:
each stall reason's share of the sampled warps and the instructions that hold most of it.

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > SASS.csv
    python -m bench.ncu_stalls SASS.csv [--top N]

Addresses are printed as offsets from the kernel's first instruction, as `cuobjdump -sass`
numbers them, so a line can be found in the SASS of a CPU build of the same source.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

REASON_PREFIX = "stall_"
NOT_ISSUED = "(Not Issued)"


@dataclass(frozen=True)
class Instruction:
    offset: int
    source: str
    stalls: dict[str, float]  # reason (without the prefix) -> sampled warps


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def load(path: Path) -> tuple[str, list[Instruction]]:
    """The kernel's name and its instructions, in address order."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    kernel = ""
    header_at = 0
    for index, row in enumerate(rows):
        if row and row[0] == "Kernel Name" and len(row) > 1:
            kernel = row[1]
        if row and row[0] == "Address":
            header_at = index
            break
    else:
        raise ValueError(f"{path}: no 'Address' header row; is it ncu's --page source --csv?")
    header = rows[header_at]
    address, source = header.index("Address"), header.index("Source")
    reasons = {
        index: name.removeprefix(REASON_PREFIX)
        for index, name in enumerate(header)
        if name.startswith(REASON_PREFIX) and not name.endswith(NOT_ISSUED)
    }
    parsed = []
    for row in rows[header_at + 1 :]:
        if len(row) < len(header) or not row[address].startswith("0x"):
            continue
        stalls = {name: _number(row[index]) for index, name in reasons.items()}
        parsed.append(Instruction(int(row[address], 16), row[source].strip(), stalls))
    if not parsed:
        raise ValueError(f"{path}: no instructions")
    base = min(instruction.offset for instruction in parsed)
    relative = [
        Instruction(instruction.offset - base, instruction.source, instruction.stalls)
        for instruction in parsed
    ]
    return kernel, sorted(relative, key=lambda instruction: instruction.offset)


def report(kernel: str, instructions: list[Instruction], top: int) -> list[str]:
    totals: dict[str, float] = {}
    for instruction in instructions:
        for reason, samples in instruction.stalls.items():
            totals[reason] = totals.get(reason, 0.0) + samples
    everything = sum(totals.values())
    lines = [f"{kernel}: {everything:.0f} sampled warps"]
    if everything == 0:
        return lines
    for reason, total in sorted(totals.items(), key=lambda item: -item[1]):
        if total == 0:
            continue
        lines.append(f"{reason:<18} {total:>9.0f} {100 * total / everything:5.1f}%")
        ranked = sorted(instructions, key=lambda instruction: -instruction.stalls[reason])
        for instruction in ranked[:top]:
            samples = instruction.stalls[reason]
            if samples == 0:
                break
            share = 100 * samples / everything
            lines.append(
                f"    {samples:>8.0f} {share:4.1f}%  /*{instruction.offset:04x}*/ {instruction.source}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="ncu --page source --csv --print-source sass output")
    parser.add_argument("--top", type=int, default=5, help="instructions shown per reason")
    args = parser.parse_args(argv)
    kernel, instructions = load(args.csv)
    print("\n".join(report(kernel, instructions, args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

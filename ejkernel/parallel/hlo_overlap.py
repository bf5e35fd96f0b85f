"""Whether a compiled ring overlaps its ``ppermute`` with compute: read from the optimized, scheduled HLO text.

``permute_overlap(compiled.as_text())`` reports, for every collective-permute inside a loop body (the ring's
steps), whether it is asynchronous (a ``collective-permute-start``/``-done`` pair), whether its operand
depends on any compute of the same step (it must not: the ring sends the block it holds, then computes on
it), whether it is scheduled before that compute, and how many compute instructions the schedule puts
between its start and its done (the overlap; 0 for a synchronous permute).

Compute is a ``conditional`` (a ring pair's ``lax.switch``), ``dot``, ``convolution``, ``custom-call`` (a
Pallas kernel) or an instruction whose called computations hold one (a fusion, the loop over a step's pairs).
The text is XLA's HLO dump format (``is_scheduled``:
instructions in schedule order).
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["PermuteReport", "permute_overlap"]

_COMPUTE_OPS = frozenset({"conditional", "dot", "convolution", "custom-call"})
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_NAME = re.compile(r"%([\w.\-]+)")


@dataclasses.dataclass(frozen=True)
class PermuteReport:
    """One collective-permute of a loop body, as scheduled."""

    computation: str
    name: str
    asynchronous: bool
    independent_of_compute: bool  # its operand needs no compute of the same step
    issued_before_compute: bool  # scheduled before every compute instruction of the step
    compute_overlapped: int  # compute instructions scheduled between start and done


@dataclasses.dataclass(frozen=True)
class _Instruction:
    name: str
    opcode: str
    operands: tuple[str, ...]
    called: tuple[str, ...]


def _skip_type(rest: str) -> str:
    """``rest`` after the result type (a shape token or a parenthesised tuple of them)."""
    if not rest.startswith("("):
        return rest.split(" ", 1)[1] if " " in rest else ""
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[i + 1:].lstrip()
    return ""


def _parse_instruction(line: str) -> _Instruction | None:
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    body = _skip_type(m.group(2))
    op = re.match(r"([\w\-]+)\(", body)
    if not op:
        return None
    depth, end = 0, len(body)
    for i in range(op.end() - 1, len(body)):
        depth += body[i] == "("
        depth -= body[i] == ")"
        if depth == 0:
            end = i
            break
    operands = tuple(_NAME.findall(body[op.end():end]))
    called = tuple(_NAME.findall(body[end:]))
    return _Instruction(m.group(1), op.group(1), operands, called)


def _computations(hlo: str) -> dict[str, list[_Instruction]]:
    comps: dict[str, list[_Instruction]] = {}
    current = None
    for line in hlo.splitlines():
        if current is None:
            m = _HEADER.match(line.strip())
            if m and "=" not in line.split("{")[0].split("(")[0]:
                current = m.group(1)
                comps[current] = []
        elif line.strip() == "}":
            current = None
        else:
            inst = _parse_instruction(line)
            if inst is not None:
                comps[current].append(inst)
    return comps


def _is_compute(inst: _Instruction, comps: dict[str, list[_Instruction]], seen: set[str] | None = None) -> bool:
    """A compute op, or one (fusion, while, call) whose called computations hold one."""
    if inst.opcode in _COMPUTE_OPS:
        return True
    seen = set() if seen is None else seen
    for name in inst.called:
        if name in comps and name not in seen:
            seen.add(name)
            if any(_is_compute(i, comps, seen) for i in comps[name]):
                return True
    return False


def permute_overlap(hlo: str) -> list[PermuteReport]:
    """The collective-permutes of every loop body that holds both permutes and compute (a ring step)."""
    comps = _computations(hlo)
    bodies = {name for insts in comps.values() for i in insts if i.opcode == "while" for name in i.called}
    reports = []
    for comp_name, insts in comps.items():
        if comp_name not in bodies:
            continue
        permutes = [i for i in insts if i.opcode in ("collective-permute", "collective-permute-start")]
        compute = [k for k, i in enumerate(insts) if _is_compute(i, comps)]
        if not permutes or not compute:
            continue
        index = {i.name: k for k, i in enumerate(insts)}
        by_name = {i.name: i for i in insts}
        dependent: set[str] = set()  # instructions that need some compute of this computation
        for inst in insts:  # schedule order is a topological order
            if _is_compute(inst, comps) or any(o in dependent for o in inst.operands):
                dependent.add(inst.name)
        for p in permutes:
            start = index[p.name]
            done = start
            if p.opcode == "collective-permute-start":
                dones = [k for k, i in enumerate(insts) if i.opcode == "collective-permute-done" and p.name in i.operands]
                done = dones[0] if dones else start
            reports.append(PermuteReport(
                computation=comp_name,
                name=p.name,
                asynchronous=p.opcode == "collective-permute-start",
                independent_of_compute=not any(o in dependent for o in by_name[p.name].operands),
                issued_before_compute=start < min(compute),
                compute_overlapped=sum(1 for k in compute if start < k < done),
            ))
    return reports

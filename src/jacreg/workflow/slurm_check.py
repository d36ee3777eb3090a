"""What a SLURM cluster can give, what the workflow asks for, and jobs that will never start.

Used by ``rules/cluster.smk`` when Snakemake runs with ``--executor slurm`` (``profiles/slurm``):

- **Pre-flight check.** Before the first ``sbatch``, every cluster job's request (CPUs, memory,
  GPUs and other GRES, runtime, as the executor plugin will pass them to ``sbatch``) is compared
  with its partition: ``scontrol show partition -o`` (MaxTime, MaxCPUsPerNode, MaxMemPerNode,
  MaxNodes) and ``scontrol show node -o`` (CPUs, RealMemory less MemSpecLimit, Gres per node).
  A request that no node of the partition can meet stops the run with :func:`format_findings`:
  the rule, what it asks, what the partition offers, and the ``--set-threads`` /
  ``--set-resources`` override that makes it fit. ``JACREG_SLURM_CAP=1`` instead lowers every
  request to the largest node of its partition (:func:`cap_requests`).
- **Stuck jobs.** :class:`StuckTracker` turns ``squeue`` rows into one warning per job that has
  been PENDING longer than a threshold with a reason that does not clear by itself
  (:data:`NEVER_CLEARS`: PartitionConfig, ReqNodeNotAvail, InvalidAccount, ...).
- **Orphans.** :func:`select_orphans` picks, from ``squeue`` rows, the jobs that a Snakemake
  process which is gone submitted for outputs this run is about to make.

Parsing and comparison are pure functions of the commands' text (unit-tested on captured output in
``tests/test_slurm_check.py``); only :func:`run_command` and its callers touch the cluster.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

CAP_ENV = "JACREG_SLURM_CAP"
CHECK_ENV = "JACREG_SLURM_CHECK"
STUCK_ENV = "JACREG_SLURM_STUCK_AFTER"
DEFAULT_STUCK_AFTER = 300.0

# ------------------------------------------------------------------------------------------------
# Parsing scontrol output


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=")


def parse_records(text: str) -> list[dict[str, str]]:
    """``scontrol show partition|node`` output as one ``{key: value}`` dict per record.

    Accepts the one-line form (``-o``) and the default form (indented continuation lines, records
    separated by blank lines). Values may contain spaces (``OS=Linux 6.1.0 #1 SMP``, ``Reason=Not
    responding``); a value runs until the next `` Key=``.
    """
    records: list[dict[str, str]] = []
    lines: list[str] = []
    for raw in text.splitlines() + [""]:
        if not raw.strip() or (lines and not raw[:1].isspace()):
            if lines:
                records.append(_parse_line(" ".join(lines)))
            lines = [raw.strip()] if raw.strip() else []
        else:
            lines.append(raw.strip())
    return [r for r in records if r]


def _parse_line(line: str) -> dict[str, str]:
    matches = list(_KEY.finditer(line))
    record = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        record[match.group(1)] = line[match.end():end].strip()
    return record


_UNLIMITED = {"", "UNLIMITED", "INFINITE", "NONE", "N/A", "(null)"}


def parse_limit(value: str | None) -> int | None:
    """An integer limit; ``None`` for UNLIMITED (and the other spellings of "no limit")."""
    if value is None or value.strip().upper() in _UNLIMITED:
        return None
    return int(value)


def parse_time_minutes(value: str | None) -> int | None:
    """A SLURM time (``UNLIMITED``, ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)
    in whole minutes, rounded down; ``None`` when unlimited."""
    if value is None or value.strip().upper() in _UNLIMITED:
        return None
    value = value.strip()
    days = 0
    if "-" in value:
        day_part, value = value.split("-", 1)
        days = int(day_part)
        parts = [int(p) for p in value.split(":")]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:
        parts = [int(p) for p in value.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts[:3]
    return days * 1440 + hours * 60 + minutes + seconds // 60


def format_minutes(minutes: int | None) -> str:
    if minutes is None:
        return "UNLIMITED"
    return f"{minutes} min"


_SUFFIX = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _count(text: str) -> int:
    text = text.strip()
    if text and text[-1].upper() in _SUFFIX:
        return int(text[:-1]) * _SUFFIX[text[-1].upper()]
    return int(text)


def parse_gres(value: str | None) -> tuple[tuple[str, str | None, int], ...]:
    """``gpu:2``, ``gpu:a100:4(S:0-1),mps:100`` -> ``(("gpu", None, 2), ...)``; none: ``()``."""
    if value is None or value.strip() in _UNLIMITED:
        return ()
    items, depth, current = [], 0, ""
    for char in value:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        if depth == 0 and char != ")":
            current += char
    items.append(current)
    result = []
    for item in items:
        parts = [p for p in item.strip().split(":") if p]
        if not parts:
            continue
        name, type_, count = parts[0], None, 1
        if len(parts) == 2:
            if parts[1][:1].isdigit():
                count = _count(parts[1])
            else:
                type_ = parts[1]
        elif len(parts) >= 3:
            type_, count = parts[1], _count(parts[2])
        result.append((name, type_, count))
    return tuple(result)


def expand_hostlist(value: str | None) -> list[str]:
    """``node[01-03,07],gpu1`` -> ``["node01", "node02", "node03", "node07", "gpu1"]``."""
    if value is None or value.strip() in _UNLIMITED:
        return []
    names: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", value):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            names.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                names += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                names.append(f"{prefix}{part}{suffix}")
    return names


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gres: tuple[tuple[str, str | None, int], ...] = ()
    partitions: tuple[str, ...] = ()
    state: str = "IDLE"

    def gres_count(self, name: str, type_: str | None = None) -> int:
        return sum(c for n, t, c in self.gres if n == name and (type_ is None or t == type_))


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[Node, ...]
    default: bool = False
    state: str = "UP"
    max_time: int | None = None  # minutes
    max_cpus_per_node: int | None = None
    max_mem_per_node: int | None = None  # MB
    max_nodes: int | None = None

    def cpu_limit(self, node: Node) -> int:
        return min(node.cpus, self.max_cpus_per_node or node.cpus)

    def mem_limit(self, node: Node) -> int:
        return min(node.mem_mb, self.max_mem_per_node or node.mem_mb)


def parse_nodes(text: str) -> list[Node]:
    nodes = []
    for rec in parse_records(text):
        if "NodeName" not in rec:
            continue
        cpus = rec.get("CPUEfctv") or rec.get("CPUTot") or "0"
        mem = int(rec.get("RealMemory", "0") or 0) - int(rec.get("MemSpecLimit", "0") or 0)
        parts = tuple(p for p in rec.get("Partitions", "").split(",") if p)
        nodes.append(Node(name=rec["NodeName"], cpus=int(cpus), mem_mb=mem,
                          gres=parse_gres(rec.get("Gres")), partitions=parts,
                          state=rec.get("State", "UNKNOWN")))
    return nodes


def parse_partitions(partition_text: str, node_text: str) -> dict[str, Partition]:
    """Partitions by name, each with its nodes (from the nodes' ``Partitions=``, or else from the
    partition's ``Nodes=`` host list)."""
    nodes = parse_nodes(node_text)
    by_name = {n.name: n for n in nodes}
    partitions = {}
    for rec in parse_records(partition_text):
        if "PartitionName" not in rec:
            continue
        name = rec["PartitionName"]
        members = tuple(n for n in nodes if name in n.partitions)
        if not members:
            members = tuple(by_name[h] for h in expand_hostlist(rec.get("Nodes")) if h in by_name)
        max_mem = parse_limit(rec.get("MaxMemPerNode"))
        partitions[name] = Partition(
            name=name, nodes=members, default=rec.get("Default", "NO").upper() == "YES",
            state=rec.get("State", "UP"), max_time=parse_time_minutes(rec.get("MaxTime")),
            max_cpus_per_node=parse_limit(rec.get("MaxCPUsPerNode")),
            max_mem_per_node=max_mem or None, max_nodes=parse_limit(rec.get("MaxNodes")))
    return partitions


# ------------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Request:
    """What one SLURM job (one rule's job, or one group job) asks of ``sbatch``."""

    rules: tuple[str, ...]
    cpus: int
    mem_mb: int | None = None  # per node (``--mem``)
    gpus: int = 0
    gpu_type: str | None = None
    gres: tuple[tuple[str, str | None, int], ...] = ()  # from a ``gres`` resource, not ``gpu``
    runtime: int | None = None  # minutes (``--time``)
    partitions: tuple[str, ...] = ()  # empty: the cluster's default partition
    nodes: int = 1
    group: str | None = None
    jobs: int = 1
    cpus_from: str = "threads"  # the resource the CPU count came from

    @property
    def label(self) -> str:
        if self.group:
            return f"group {self.group} (rules {', '.join(self.rules)})"
        return f"rule {self.rules[0]}"

    def describe(self) -> str:
        parts = [f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}"]
        if self.mem_mb is not None:
            parts.append(f"{self.mem_mb} MB memory")
        if self.gpus:
            kind = f"{self.gpu_type} " if self.gpu_type else ""
            parts.append(f"{self.gpus} {kind}GPU{'s' if self.gpus != 1 else ''}")
        parts += [f"gres {n}{':' + t if t else ''}:{c}" for n, t, c in self.gres]
        if self.runtime is not None:
            total = " in total" if self.group and len(self.rules) > 1 else ""
            parts.append(f"{self.runtime} min{total}")
        if self.nodes != 1:
            parts.append(f"{self.nodes} nodes")
        return ", ".join(parts)


def _int(value, default=0) -> int:
    if value is None or value == "" or isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def request_from_resources(rules: Sequence[str], resources: Mapping[str, object],
                           group: str | None = None, jobs: int = 1) -> Request:
    """The ``sbatch`` request that snakemake-executor-plugin-slurm builds from a job's resources:
    ``--cpus-per-task`` (``cpus_per_task``, else ``cpus_per_gpu`` x GPUs, else threads),
    ``--mem`` (``mem_mb``, or ``mem_mb_per_cpu`` x CPUs), ``--gpus`` (``gpu``, ``gpu_model``),
    ``--gres`` (``gres``), ``--time`` (``runtime``), ``-p`` (``slurm_partition``)."""
    threads = _int(resources.get("_cores"), 1)
    gpus = _int(resources.get("gpu"))
    gpu_type = resources.get("gpu_model") or None
    if gpu_type and not gpus:
        gpus = 1
    gres = parse_gres(str(resources["gres"])) if resources.get("gres") else ()
    if not gpus:
        gpus = sum(c for n, _, c in gres if n == "gpu")
        gpu_types = {t for n, t, _ in gres if n == "gpu" and t}
        gpu_type = gpu_type or (gpu_types.pop() if len(gpu_types) == 1 else None)
    gres = tuple(g for g in gres if g[0] != "gpu")
    cpus, cpus_from = threads, "threads"
    if _int(resources.get("cpus_per_task")) > 0:
        cpus, cpus_from = _int(resources.get("cpus_per_task")), "cpus_per_task"
    elif gpus and _int(resources.get("cpus_per_gpu")) > 0:
        cpus, cpus_from = _int(resources.get("cpus_per_gpu")) * gpus, "cpus_per_gpu"
    if _int(resources.get("mem_mb_per_cpu")) > 0:
        mem = _int(resources.get("mem_mb_per_cpu")) * cpus
    else:
        mem = _int(resources.get("mem_mb"), -1)
        mem = None if mem < 0 else mem
    runtime = _int(resources.get("runtime"))  # 0 or unevaluated: the plugin passes no --time
    partition = str(resources.get("slurm_partition") or "")
    return Request(
        rules=tuple(rules), cpus=max(1, cpus), mem_mb=mem, gpus=gpus, gpu_type=gpu_type,
        gres=gres, runtime=runtime if runtime > 0 else None,
        partitions=tuple(p for p in re.split(r"[,\s]+", partition) if p),
        nodes=max(1, _int(resources.get("nodes"), 1)), group=group, jobs=jobs,
        cpus_from=cpus_from)


def merge_requests(requests: Iterable[Request]) -> list[Request]:
    """One request per rule/group and partition: the largest value of each kind over its jobs."""
    merged: dict[tuple, Request] = {}
    for req in requests:
        key = (req.group, req.rules, req.partitions)
        old = merged.get(key)
        if old is None:
            merged[key] = req
            continue
        merged[key] = replace(
            old, cpus=max(old.cpus, req.cpus),
            mem_mb=None if old.mem_mb is None and req.mem_mb is None
            else max(old.mem_mb or 0, req.mem_mb or 0),
            gpus=max(old.gpus, req.gpus),
            gres=tuple(sorted(set(old.gres) | set(req.gres))),
            runtime=None if old.runtime is None and req.runtime is None
            else max(old.runtime or 0, req.runtime or 0),
            nodes=max(old.nodes, req.nodes), jobs=old.jobs + req.jobs)
    return list(merged.values())


# ------------------------------------------------------------------------------------------------
# Comparison


@dataclass(frozen=True)
class Shortfall:
    kind: str  # cpus | mem | gpus | gres | runtime | nodes | combination
    asked: object
    offered: object
    what: str = ""


def node_fits(req: Request, node: Node, part: Partition) -> bool:
    if req.cpus > part.cpu_limit(node):
        return False
    if req.mem_mb is not None and req.mem_mb > part.mem_limit(node):
        return False
    if req.gpus and req.gpus > node.gres_count("gpu", req.gpu_type):
        return False
    return all(count <= node.gres_count(name, type_) for name, type_, count in req.gres)


def shortfalls(req: Request, part: Partition) -> list[Shortfall]:
    """What ``req`` asks beyond ``part``; empty when some node of it (and its limits) fits."""
    found = []
    if req.runtime is not None and part.max_time is not None and req.runtime > part.max_time:
        found.append(Shortfall("runtime", req.runtime, part.max_time))
    available = len(part.nodes) if part.max_nodes is None else min(len(part.nodes),
                                                                     part.max_nodes)
    if req.nodes > available:
        found.append(Shortfall("nodes", req.nodes, available))
    if not part.nodes:
        return found
    cpu_cap = max(part.cpu_limit(n) for n in part.nodes)
    if req.cpus > cpu_cap:
        found.append(Shortfall("cpus", req.cpus, cpu_cap))
    if req.mem_mb is not None:
        mem_cap = max(part.mem_limit(n) for n in part.nodes)
        if req.mem_mb > mem_cap:
            found.append(Shortfall("mem", req.mem_mb, mem_cap))
    if req.gpus:
        gpu_cap = max(n.gres_count("gpu", req.gpu_type) for n in part.nodes)
        if req.gpus > gpu_cap:
            found.append(Shortfall("gpus", req.gpus, gpu_cap, req.gpu_type or ""))
    for name, type_, count in req.gres:
        cap = max(n.gres_count(name, type_) for n in part.nodes)
        if count > cap:
            found.append(Shortfall("gres", count, cap, f"{name}{':' + type_ if type_ else ''}"))
    if not found:
        fitting = sum(node_fits(req, n, part) for n in part.nodes)
        if fitting < req.nodes:
            found.append(Shortfall("combination", req.nodes, fitting))
    return found


def _unavailable(node: Node) -> bool:
    return any(s in node.state.upper() for s in ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING",
                                                   "FUTURE", "POWERED_DOWN"))


def default_partition(partitions: Mapping[str, Partition]) -> str | None:
    return next((p.name for p in partitions.values() if p.default), None)


@dataclass(frozen=True)
class Finding:
    """A request that fits none of its partitions."""

    request: Request
    partition: str
    problems: tuple[Shortfall, ...]
    offers: str = ""
    elsewhere: tuple[str, ...] = ()  # partitions where it would fit
    rule_requests: tuple[Request, ...] = ()  # each member rule's own request


@dataclass
class CheckResult:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def offers(part: Partition) -> str:
    if not part.nodes:
        return f"partition '{part.name}' has no nodes"
    cpus = max(part.cpu_limit(n) for n in part.nodes)
    mem = max(part.mem_limit(n) for n in part.nodes)
    gres: dict[str, int] = {}
    for node in part.nodes:
        for name, type_, _ in node.gres:
            key = f"{name}:{type_}" if type_ else name
            gres[key] = max(gres.get(key, 0), node.gres_count(name, type_))
    gres_text = ", ".join(f"{c} {k}" for k, c in sorted(gres.items())) or "no GPUs"
    return (f"partition '{part.name}' offers at most {cpus} CPUs, {mem} MB memory and "
            f"{gres_text} per node ({len(part.nodes)} node{'s' if len(part.nodes) != 1 else ''}),"
            f" MaxTime {format_minutes(part.max_time)}")


def check_requests(requests: Iterable[Request], partitions: Mapping[str, Partition],
                   rule_requests: Mapping[str, Request] | None = None) -> CheckResult:
    """Compare each request with its partition(s); a finding for each one that fits none."""
    result = CheckResult()
    rule_requests = rule_requests or {}
    default = default_partition(partitions)
    warned_states = set()
    for req in requests:
        targets = req.partitions or ((default,) if default else ())
        fitting_up = tuple(p for p in partitions if partitions[p].state.upper() == "UP"
                           and not shortfalls(req, partitions[p]))
        if not targets:
            result.findings.append(Finding(req, "", (Shortfall("partition", "", ""),),
                                           elsewhere=fitting_up))
            continue
        unknown = [t for t in targets if t not in partitions]
        known = [t for t in targets if t in partitions]
        if not known:
            result.findings.append(Finding(req, unknown[0],
                                           (Shortfall("partition", unknown[0], ""),),
                                           elsewhere=fitting_up))
            continue
        problems = {t: shortfalls(req, partitions[t]) for t in known}
        for t in known:
            state = partitions[t].state.upper()
            if state != "UP" and t not in warned_states:
                warned_states.add(t)
                result.warnings.append(
                    f"partition '{t}' is {state}: its jobs wait (or are refused) until an "
                    "administrator sets it UP")
        if any(not p for p in problems.values()):
            fitting = [n for t in known if not problems[t] for n in partitions[t].nodes
                       if node_fits(req, n, partitions[t])]
            if fitting and all(_unavailable(n) for n in fitting):
                result.warnings.append(
                    f"{req.label}: every node that fits it ({', '.join(n.name for n in fitting)})"
                    " is down or drained: its jobs pend (ReqNodeNotAvail) until one returns")
            continue
        target = known[0]
        result.findings.append(Finding(
            req, target, tuple(problems[target]), offers(partitions[target]),
            tuple(p for p in fitting_up if p not in known),
            tuple(rule_requests[r] for r in req.rules if r in rule_requests)))
    return result


# ------------------------------------------------------------------------------------------------
# Fixes and the message


def _member_requests(finding: Finding) -> list[Request]:
    return list(finding.rule_requests) or [finding.request]


def fixes(finding: Finding) -> tuple[list[str], list[str]]:
    """``(--set-threads items, --set-resources items)`` that make ``finding``'s request fit."""
    threads, resources = [], []
    members = _member_requests(finding)
    for problem in finding.problems:
        if problem.kind == "cpus":
            for m in members:
                rule = m.rules[0]
                if m.cpus > problem.offered:
                    if m.cpus_from == "threads":
                        threads.append(f"{rule}={problem.offered}")
                    elif m.cpus_from == "cpus_per_task":
                        resources.append(f"{rule}:cpus_per_task={problem.offered}")
                    else:
                        per_gpu = max(1, problem.offered // max(1, m.gpus))
                        resources.append(f"{rule}:cpus_per_gpu={per_gpu}")
        elif problem.kind == "mem":
            resources += [f"{m.rules[0]}:mem_mb={problem.offered}" for m in members
                          if (m.mem_mb or 0) > problem.offered]
        elif problem.kind == "gpus":
            resources += [f"{m.rules[0]}:gpu={problem.offered}" for m in members
                          if m.gpus > problem.offered]
        elif problem.kind == "runtime":
            total = finding.request.runtime or 0
            for m in members:
                if m.runtime is None:
                    continue
                if len(members) > 1 and total:
                    value = max(1, math.floor(m.runtime * problem.offered / total))
                else:
                    value = problem.offered
                if value < m.runtime:
                    resources.append(f"{m.rules[0]}:runtime={value}")
        elif problem.kind == "partition" and finding.elsewhere:
            resources += [f"{m.rules[0]}:slurm_partition={finding.elsewhere[0]}"
                          for m in members]
    return threads, resources


def merge_overrides(current: Mapping[str, object], fixes_: Sequence[str]) -> list[str]:
    """``current`` overrides (``{"train": 4}`` or ``{"train": {"mem_mb": 16000}}``) with
    ``fixes_`` (``["train=2"]`` or ``["train:mem_mb=8000"]``) applied, as command-line items.

    A ``--set-threads`` or ``--set-resources`` on the command line replaces the whole entry of a
    profile, so a fix must repeat the profile's other items to keep them."""
    items: dict[str, object] = {}
    for rule, value in current.items():
        if isinstance(value, Mapping):
            for name, raw in value.items():
                items[f"{rule}:{name}"] = getattr(raw, "raw", raw)
        else:
            items[str(rule)] = getattr(value, "raw", value)
    for fix in fixes_:
        key, _, value = fix.partition("=")
        items[key] = value
    return [f"{key}={value}" for key, value in items.items()]


_PROBLEM_TEXT = {
    "cpus": "{asked} CPUs > {offered}, the most CPUs a node of the partition has.",
    "mem": "{asked} MB > {offered} MB, the most memory a node of the partition has.",
    "gpus": "{asked} {kind}GPUs > {offered}, the most a node of the partition has.",
    "gres": "gres {what}:{asked} > {offered} per node.",
    "runtime": "{asked} min > MaxTime {offered} min of the partition.",
    "nodes": "{asked} nodes > {offered} available.",
    "combination": "each part fits some node, but no node has all of it at once.",
}


def format_findings(result: CheckResult, partitions: Mapping[str, Partition],
                    current_threads: Mapping[str, object] | None = None,
                    current_resources: Mapping[str, object] | None = None) -> str:
    """The message that stops the run: each request that cannot fit, and the fix.

    ``current_threads`` and ``current_resources`` are the ``--set-threads`` and
    ``--set-resources`` in effect (profile or command line): the fix repeats them."""
    jobs = sum(f.request.jobs for f in result.findings)
    kinds = len(result.findings)
    lines = [f"SLURM pre-flight check: {jobs} cluster job{'s' if jobs != 1 else ''} "
             f"({kinds} kind{'s' if kinds != 1 else ''}) could never start on this cluster; "
             "nothing was submitted."]
    all_threads: list[str] = []
    all_resources: list[str] = []
    for finding in result.findings:
        req = finding.request
        jobs = f" ({req.jobs} jobs)" if req.jobs > 1 else ""
        where = f" in partition '{finding.partition}'" if finding.partition else ""
        lines.append(f"- {req.label}{jobs} asks for {req.describe()}{where}.")
        for problem in finding.problems:
            if problem.kind == "partition":
                if problem.asked:
                    lines.append(f"    partition '{problem.asked}' does not exist; partitions: "
                                 f"{', '.join(sorted(partitions)) or 'none'}.")
                else:
                    lines.append("    no partition was given and the cluster has no default "
                                 "partition: export JACREG_SLURM_PARTITION=<name>.")
            elif problem.kind in _PROBLEM_TEXT:
                kind = f"{problem.what} " if problem.what else ""
                lines.append("    " + _PROBLEM_TEXT[problem.kind].format(
                    asked=problem.asked, offered=problem.offered, what=problem.what, kind=kind))
        if finding.offers:
            lines.append(f"    {finding.offers}.")
        if finding.elsewhere:
            lines.append(f"    It fits partition(s) {', '.join(finding.elsewhere)}: "
                         f"export JACREG_SLURM_PARTITION={finding.elsewhere[0]}, or "
                         f"--set-resources {finding.request.rules[0]}:slurm_partition="
                         f"{finding.elsewhere[0]}.")
        threads, resources = fixes(finding)
        all_threads += [t for t in threads if t not in all_threads]
        all_resources += [r for r in resources if r not in all_resources]
    if all_threads or all_resources:
        override = []
        if all_threads:
            override.append("--set-threads "
                            + " ".join(merge_overrides(current_threads or {}, all_threads)))
        if all_resources:
            override.append("--set-resources "
                            + " ".join(merge_overrides(current_resources or {}, all_resources)))
        lines.append("Fix: add to the snakemake command line (it repeats the other "
                     "--set-threads/--set-resources in effect, which it replaces)")
        lines.append("    " + " ".join(override))
    lines.append(f"or let the workflow lower every request to the largest node of its partition: "
                 f"{CAP_ENV}=1 before the command (docs/cluster.md).")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The opt-in cap


def best_node(req: Request, part: Partition) -> Node | None:
    """The node of ``part`` that gives the most of ``req`` (GPUs first, then CPUs, memory)."""
    if not part.nodes:
        return None

    def score(node: Node):
        return (min(req.gpus, node.gres_count("gpu", req.gpu_type)),
                all(c <= node.gres_count(n, t) for n, t, c in req.gres),
                min(req.cpus, part.cpu_limit(node)),
                min(req.mem_mb or 0, part.mem_limit(node)),
                part.cpu_limit(node), part.mem_limit(node))
    return max(part.nodes, key=score)


def cap_requests(requests: Iterable[Request], rule_requests: Mapping[str, Request],
                 partitions: Mapping[str, Partition]) -> dict[str, dict[str, int]]:
    """Per rule, the lowered values (``_cores``, ``mem_mb``, ``gpu``, ``runtime``) that make
    each request fit the largest node of its partition; rules that fit are left out.

    Grouped rules run one after another inside one SLURM job whose runtime is their sum: their
    runtimes are scaled down together so that the sum fits MaxTime.
    """
    caps: dict[str, dict[str, int]] = {}
    default = default_partition(partitions)
    for req in requests:
        targets = [t for t in (req.partitions or ((default,) if default else ()))
                   if t in partitions]
        if not targets or any(not shortfalls(req, partitions[t]) for t in targets):
            continue
        part = partitions[targets[0]]
        node = best_node(req, part)
        members = [rule_requests.get(r, req) for r in req.rules]
        for member in members:
            rule = member.rules[0]
            cap = caps.setdefault(rule, {})
            if node is not None:
                if member.cpus > part.cpu_limit(node) and member.cpus_from == "threads":
                    cap["_cores"] = min(cap.get("_cores", member.cpus), part.cpu_limit(node))
                if member.mem_mb is not None and member.mem_mb > part.mem_limit(node):
                    cap["mem_mb"] = min(cap.get("mem_mb", member.mem_mb), part.mem_limit(node))
                gpus = node.gres_count("gpu", member.gpu_type)
                if member.gpus > gpus:
                    cap["gpu"] = min(cap.get("gpu", member.gpus), gpus)
        if part.max_time is not None and req.runtime is not None and req.runtime > part.max_time:
            for member in members:
                if member.runtime is None:
                    continue
                rule = member.rules[0]
                value = (max(1, math.floor(member.runtime * part.max_time / req.runtime))
                         if len(members) > 1 else part.max_time)
                caps[rule]["runtime"] = min(caps[rule].get("runtime", member.runtime), value)
    return {rule: cap for rule, cap in caps.items() if cap}


def describe_caps(caps: Mapping[str, Mapping[str, int]],
                  rule_requests: Mapping[str, Request]) -> list[str]:
    units = {"_cores": "CPUs", "mem_mb": "MB", "gpu": "GPUs", "runtime": "min"}
    attr = {"_cores": "cpus", "mem_mb": "mem_mb", "gpu": "gpus", "runtime": "runtime"}
    lines = []
    for rule, cap in sorted(caps.items()):
        old = rule_requests.get(rule)
        parts = [f"{getattr(old, attr[k]) if old else '?'} -> {v} {units[k]}"
                 for k, v in cap.items()]
        lines.append(f"rule {rule}: " + ", ".join(parts))
    return lines


# ------------------------------------------------------------------------------------------------
# squeue: stuck jobs and orphans

# Pending reasons that do not clear while the job waits: the request or its account/partition must
# change (or an administrator must act). Reasons not listed (Priority, Resources, Dependency,
# QOSGrp*, AssocGrp*, ...) clear as other jobs finish.
NEVER_CLEARS = {
    "PartitionConfig": "the request exceeds what the partition allows (CPUs, memory, GPUs or "
                       "nodes per job)",
    "PartitionNodeLimit": "the node count is outside the partition's limits",
    "PartitionTimeLimit": "the runtime exceeds the partition's MaxTime",
    "PartitionDown": "the partition is DOWN until an administrator sets it UP",
    "PartitionInactive": "the partition is INACTIVE until an administrator activates it",
    "ReqNodeNotAvail": "the nodes the job can use are down, drained or reserved",
    "InvalidAccount": "the account is unknown or not yours (JACREG_SLURM_ACCOUNT)",
    "InvalidQOS": "the QOS is unknown or not allowed for the account",
    "AccountNotAllowed": "the account may not use this partition",
    "QOSNotAllowed": "the QOS may not use this partition",
    "BadConstraints": "no node has the requested features (constraint)",
    "DependencyNeverSatisfied": "a job it depends on failed",
    "JobHeldAdmin": "an administrator holds it",
    "JobHeldUser": "it is held (scontrol release <jobid>)",
    "NodeDown": "a node it needs is down",
}
_PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)Max\w*PerJob\w*$")


def never_clears(reason: str) -> str | None:
    """Why ``reason`` (squeue ``%r``) will not clear by itself, or ``None`` if it may."""
    code = reason.split(",")[0].strip().strip("()")
    if code in NEVER_CLEARS:
        return NEVER_CLEARS[code]
    if _PER_JOB_LIMIT.match(code):
        return "the request exceeds a per-job limit of your QOS or association"
    return None


SQUEUE_FORMAT = "%i|%T|%Z|%j|%k|%r"
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


@dataclass(frozen=True)
class QueuedJob:
    jobid: str
    state: str
    workdir: str
    name: str
    comment: str
    reason: str

    @property
    def what(self) -> str:
        """``rule train, wildcards mnist5k_0_0`` from the plugin's ``--comment``."""
        text = self.comment[5:] if self.comment.startswith("rule_") else self.comment
        rule, _, wildcards = text.partition("_wildcards_")
        return f"rule {rule}" + (f", wildcards {wildcards}" if wildcards else "")


def parse_squeue(text: str) -> list[QueuedJob]:
    """``squeue -h -o SQUEUE_FORMAT`` rows."""
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|", 5)
        if len(parts) == 6 and parts[0]:
            jobs.append(QueuedJob(*(p.strip() for p in parts)))
    return jobs


class StuckTracker:
    """Remembers since when each pending job has had its reason; reports each stuck job once."""

    def __init__(self, after_seconds: float):
        self.after = after_seconds
        self.since: dict[tuple[str, str], float] = {}
        self.reported: set[tuple[str, str]] = set()

    def update(self, now: float, jobs: Iterable[QueuedJob],
               describe: Mapping[str, str] | None = None) -> list[str]:
        describe = describe or {}
        messages, current = [], set()
        for job in jobs:
            if job.state != "PENDING":
                continue
            why = never_clears(job.reason)
            if why is None:
                continue
            key = (job.jobid, job.reason)
            current.add(key)
            start = self.since.setdefault(key, now)
            if now - start >= self.after and key not in self.reported:
                self.reported.add(key)
                what = describe.get(job.jobid) or job.what
                messages.append(
                    f"SLURM job {job.jobid} ({what}) has been PENDING for {now - start:.0f} s "
                    f"with reason {job.reason}, which will not clear by itself: {why}. "
                    "Fix the request or the account/partition and rerun; Ctrl-C cancels this "
                    "run's jobs (docs/cluster.md).")
        self.since = {k: v for k, v in self.since.items() if k in current}
        return messages


def stuck_after_seconds(environ: Mapping[str, str] | None = None) -> float:
    value = (environ if environ is not None else os.environ).get(STUCK_ENV, "")
    try:
        return float(value) if value.strip() else DEFAULT_STUCK_AFTER
    except ValueError:
        return DEFAULT_STUCK_AFTER


def base_jobid(jobid: str) -> str:
    return jobid.split("_", 1)[0].split(".", 1)[0]


_UUID = re.compile(r"(?:^|_)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def select_orphans(jobs: Iterable[QueuedJob], recorded: Iterable[str], workdir: str,
                   own_name: str | None = None) -> list[QueuedJob]:
    """Queued jobs recorded (in ``.snakemake/incomplete``) as making outputs of this run, submitted
    from this working directory by the executor plugin (job name = a run UUID) of another run."""
    wanted = {base_jobid(j) for j in recorded if j}
    real = os.path.realpath(workdir)
    orphans = []
    for job in jobs:
        if base_jobid(job.jobid) not in wanted or job.state not in ACTIVE_STATES:
            continue
        if job.workdir and os.path.realpath(job.workdir) != real:
            continue
        if not _UUID.search(job.name) or (own_name and job.name == own_name):
            continue
        orphans.append(job)
    return orphans


# ------------------------------------------------------------------------------------------------
# Commands


def run_command(args: Sequence[str], timeout: float = 30) -> str:
    """stdout of a SLURM command; ``RuntimeError`` with its stderr when it fails."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"{' '.join(args)}: {error}") from error
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def query_partitions() -> dict[str, Partition]:
    return parse_partitions(run_command(["scontrol", "show", "partition", "-o"]),
                            run_command(["scontrol", "show", "node", "-o"]))


def query_jobs(user: str | None = None, name: str | None = None) -> list[QueuedJob]:
    args = ["squeue", "-h", "-o", SQUEUE_FORMAT]
    if user:
        args += ["-u", user]
    if name:
        args += [f"--name={name}"]
    return parse_squeue(run_command(args))

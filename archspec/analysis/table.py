"""Human output of `archspec check`: the per-layer table and the totals."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archspec.analysis.report import Report


def human_number(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def render_rows(rows: list[dict], saved: bool = False) -> list[str]:
    """The per-layer table: a header, a rule, one line per row of `Report.layer_rows()` (the
    language server's hover shows a few rows the same way)."""
    headers = ["path", "op", "output", "params", "MACs", "RF"]
    if saved:
        headers.append("saved")
    body = []
    for r in rows:
        rf = r["receptive_field"]
        cells = [
            r["path"],
            r["op"],
            "x".join(map(str, r["output"])),
            f"{r['params']:,}" if r["params"] else "-",
            human_number(r["macs"]) if r["macs"] else "-",
            (str(rf[0]) if rf[0] == rf[1] else f"{rf[0]}x{rf[1]}") if rf else "-",
        ]
        if saved:
            cells.append(human_bytes(r["saved_bytes"]) if r["saved_bytes"] else "-")
        body.append(cells)
    widths = [
        max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    right = {3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(c) for c in body)]


def render_table(report: Report) -> str:
    memory = report.memory
    out = render_rows(report.layer_rows(), saved=memory is not None)
    variant = f" ({report.variant})" if report.variant else ""
    shape = "x".join(map(str, report.input or ()))
    out.append("")
    outputs = report.outputs
    if outputs:  # several outputs: one line each, in the order the built module returns them
        out.append(f"{report.name}{variant}: input {shape} -> outputs")
        shapes = {k: "x".join(map(str, v)) for k, v in outputs.items()}
        width = max(len(k) for k in outputs)
        column = max(len(s) for s in shapes.values())
        for key, path in report.network.outputs if report.network else []:
            at = "" if key == path else f"  ({path})"
            out.append(f"  {key:<{width}}  {shapes[key]:<{column}}{at}".rstrip())
    else:
        out.append(
            f"{report.name}{variant}: input {shape} -> output "
            f"{'x'.join(map(str, report.output or ()))}"
        )
    out.append(f"params: {report.params:,} ({human_number(report.params or 0)})")
    out.append(f"MACs:   {report.macs:,} ({human_number(report.macs or 0)}) per sample")
    aux = report.network.aux_layers if report.network is not None else []
    if aux:  # listed above, but not in the inference total
        macs = sum(n.inferred.macs for n in aux if n.inferred is not None)
        out.append(f"        + {macs:,} ({human_number(macs)}) in auxiliary heads, training only")
    if memory is not None:
        out.append("")
        out.extend(memory.render_lines())
    return "\n".join(out)

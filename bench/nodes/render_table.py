"""Markdown tables of a node-benchmark JSON (what bench/nodes/README.md shows).

    python bench/nodes/render_table.py                          # results.json
    python bench/nodes/render_table.py results-threads2.json --sizes 256 512
"""
import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("closed-form", "naive", "dense", "cg", "unroll")


def render(data, sizes=None):
    rows = data["rows"]
    out = []
    for prob in dict.fromkeys(r["problem"] for r in rows):
        out += [f"### {prob}", "",
                "|   m | method      | backward ms | × closed form | naive ÷ this | peak MiB | note |",
                "|----:|-------------|------------:|------:|------:|---------:|------|"]
        by = {(r["m"], r["method"]): r for r in rows if r["problem"] == prob}
        for m in sorted({m for m, _ in by}):
            if sizes and m not in sizes:
                continue
            naive = by.get((m, "naive"), {}).get("backward_s", float("nan"))
            for meth in METHODS:
                r = by.get((m, meth))
                if r is None:
                    continue
                t = r["backward_s"]
                if t != t:  # skipped
                    out.append(f"| {m:>3} | {meth:<11} | – | – | – | – | {r['note']} |")
                    continue
                out.append(f"| {m:>3} | {meth:<11} | {t * 1e3:>8.2f} | {r['ratio_to_closed_form']:>5.1f} "
                           f"| {naive / t:>5.1f} | {r['peak_bytes'] / 2**20:>8.2f} | {r['note']} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="?", default=str(HERE / "results.json"))
    ap.add_argument("--sizes", type=int, nargs="*")
    args = ap.parse_args(argv)
    p = Path(args.json)
    if not p.is_absolute() and not p.exists():
        p = HERE / p
    data = json.loads(p.read_text())
    print(f"machine: {data['machine']}\n")
    print(render(data, args.sizes))


if __name__ == "__main__":
    main()

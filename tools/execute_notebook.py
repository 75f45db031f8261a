"""Execute notebooks headless and save the executed copies (what `make notebooks` runs).

    python tools/execute_notebook.py notebooks/04_constrained_gradient_geometry.ipynb [...]
        [--output-dir build/notebooks] [--timeout 3600]

Why not `jupyter nbconvert --execute`: nbclient (0.11, with pyzmq 27 / jupyter_client 8 here)
waits for a cell's execute_reply with one `shell_channel.get_msg(timeout=<cell timeout>)`, and
after a cell that opens ipywidgets (our `interact` cells) the wake-up for that reply is sometimes
missed: the reply sits in the socket until the whole cell timeout has passed (measured here: one
run in two of notebook 04 took 62 s instead of 2.5 s with a 60 s timeout, with ipykernel 6 and 7
alike; with nbconvert's 3600 s it would take an hour). See jupyter/nbclient#312. This runner
asks for the reply in slices of 0.25 s, so a missed wake-up costs at most that; the cell timeout
still applies as a whole.
"""
import argparse
import sys
import time
from pathlib import Path
from queue import Empty

import nbformat
from nbclient import NotebookClient

SLICE_S = 0.25


class SlicedReplyClient(NotebookClient):
    """NotebookClient whose shell channel is polled in short slices (see the module docstring)."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        get_msg = kc.shell_channel.get_msg

        async def sliced_get_msg(timeout=None):
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                step = SLICE_S if left is None else max(0.0, min(SLICE_S, left))
                try:
                    return await get_msg(timeout=step)
                except Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise

        kc.shell_channel.get_msg = sliced_get_msg
        return kc


def execute(path, output_dir, timeout):
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = SlicedReplyClient(nb, timeout=timeout, kernel_name="python3",
                               resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    out = Path(output_dir) / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--output-dir", default="build/notebooks")
    ap.add_argument("--timeout", type=int, default=3600, help="per cell, seconds")
    args = ap.parse_args(argv)
    for nb in args.notebooks:
        t0 = time.time()
        print(f"== {nb}", flush=True)
        out = execute(nb, args.output_dir, args.timeout)
        print(f"   {time.time() - t0:.1f} s -> {out}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""``trajhook.show`` in a real notebook, executed by nbclient on a real IPython kernel.

The notebook shows a store; the live page's server must answer at the IFrame's URL over loopback,
run in a process other than the kernel (its h5py reader must not contend with training there), and
stop when the kernel exits.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from serve_writer import write

from trajhook import load

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("starlette")


@pytest.mark.timeout(120)
def test_show_displays_the_live_page_from_a_background_server(tmp_path):
    store = tmp_path / "log.h5"
    write(store, steps=4)
    cells = [
        f"import trajhook\nframe = trajhook.show({str(store)!r})",
        "import json, os, urllib.request\n"
        "from trajhook.serve.notebook import _SERVERS\n"
        "state = json.load(urllib.request.urlopen(frame.src + 'api/state'))\n"
        "page = urllib.request.urlopen(frame.src).read().decode()\n"
        "print(json.dumps({'kernel': os.getpid(), 'servers': [p.pid for p, _ in _SERVERS.values()],"
        " 'src': frame.src, 'steps': state['runs'][0]['steps'], 'page': 'type=\"range\"' in page}))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        notebook, timeout=90, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    shown = notebook.cells[0].outputs
    html = [o["data"]["text/html"] for o in shown if o.get("output_type") == "display_data"]
    report = json.loads(notebook.cells[1].outputs[0]["text"])
    assert len(html) == 1 and "<iframe" in html[0] and report["src"] in html[0]
    assert report["src"].startswith("http://127.0.0.1:")
    assert report["steps"] == load(store).steps.tolist() == [0, 1, 2, 3]
    assert report["page"]
    server = report["servers"][0]
    assert server != report["kernel"]  # the reader runs outside the kernel
    deadline = time.monotonic() + 10  # and the server went with the kernel
    while _alive(server):
        assert time.monotonic() < deadline, "the server outlived the kernel"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by the kernel's parent) is gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False

"""The notebook widgets in a real JupyterLab, driven by headless Debian chromium.

A ``jupyter lab`` server is started on 127.0.0.1 (a free port, a random token) with its
root, config, data, runtime, settings and workspaces under pytest's tmp_path; a
purpose-made notebook builds the toy lab, trains a short offset with ``TrainMonitor``
displayed and shows ``Compare`` on a forget question. The page runs every cell and the
test reads what the browser shows:

* the monitor's step counter and loss curve grow while the offset trains;
* ``Compare`` shows the base and the fused answers, and they differ;
* typing α = 0 into the slider's readout makes the fused answer the base's again.

Screenshots go to $OFFSETLAB_ARTIFACTS (default: build/screenshots/ in the repository).
The server, its kernel and the browser are stopped in ``finally`` blocks; the test
checks that none of the server's processes is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import CHROMIUM, chromium_page
from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "offsetlab_widgets.ipynb"
STEPS = 20  # training steps in fast mode: enough for the fused answer to leave the base's

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason="Debian's chromium is not installed (make test installs it when "
                              "run as root)"),
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None
            for m in ("jupyterlab", "ipykernel", "ipywidgets", "nbformat", "psutil")),
        reason="JupyterLab, ipykernel, ipywidgets, nbformat or psutil is missing: "
               "install the lab and dev extras (`make test` does)"),
]

# -- the notebook ----------------------------------------------------------------------

SETUP = """\
import os
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from IPython.display import display

from offsetlab.frontends.widgets import Compare, TrainMonitor
from offsetlab.method.train import TrainConfig
from offsetlab.worlds.lab import Lab

FAST = os.environ.get("OFFSETLAB_FAST") == "1"
STEPS = {steps} if FAST else 200
torch.manual_seed(0)
lab = Lab.toy()
forget, _ = lab.training_sets("forget10")
print(f"toy lab ready: fast={{FAST}}, steps={{STEPS}}, "
      f"OMP_NUM_THREADS={{os.environ.get('OMP_NUM_THREADS')}}, torch threads={{torch.get_num_threads()}}")
"""

TRAIN = """\
monitor = TrainMonitor()
monitor.add_class("offsetlab-test-monitor")  # for the browser test to find it
display(monitor)
started = time.perf_counter()
name = lab.train("forget10", config=TrainConfig(steps=STEPS), callback=monitor)
print(f"trained {name!r}: {len(monitor.history)} steps in {time.perf_counter() - started:.1f} s")
"""

COMPARE = """\
compare = Compare(lab, question=forget[0].question, offset=name)
compare.add_class("offsetlab-test-compare")
compare
"""


def write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# offsetlab widgets under test"),
                nbformat.v4.new_code_cell(SETUP.format(steps=STEPS)),
                nbformat.v4.new_code_cell(TRAIN),
                nbformat.v4.new_code_cell(COMPARE)]
    nbformat.write(nb, str(path))


# -- the server ------------------------------------------------------------------------

# JupyterLab's own settings, written where the server reads user settings: no news or
# update checks, and every cell kept in the DOM (not virtualised) so its text can be read.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


class LabServer:
    """``jupyter lab`` on 127.0.0.1 with everything it writes under ``tmp``."""

    def __init__(self, tmp: Path):
        self.tmp, self.port, self.token = tmp, free_port(), secrets.token_hex(16)
        self.root = tmp / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "server.log"
        self.proc: subprocess.Popen | None = None
        self.children: dict[int, object] = {}  # pid -> psutil.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("config", "data", "runtime", "ipython"):
            (self.tmp / name).mkdir(parents=True, exist_ok=True)
        env.update(
            # The user's Jupyter folders move under tmp; the environment's own
            # share/jupyter (kernelspec, lab extensions) is still searched.
            JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
            JUPYTER_DATA_DIR=str(self.tmp / "data"),
            JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
            IPYTHONDIR=str(self.tmp / "ipython"),
            # Kernels inherit the server's environment.
            OFFSETLAB_FAST="1",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
        )
        return env

    def start(self, timeout: float = 90.0) -> None:
        settings = self.tmp / "lab" / "user-settings"
        for name, values in SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
                f"--LabApp.user_settings_dir={settings}",
                f"--LabApp.workspaces_dir={self.tmp / 'lab' / 'workspaces'}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
                "--ServerApp.terminals_enabled=False"]
        log = open(self.log_path, "wb")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(args, cwd=self.root, env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {self.proc.returncode} at start"
                                     f"{self.log_tail()}")
            try:
                status = self.api("status")
                if "started" in status:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"jupyter lab did not answer within {timeout:.0f} s"
                                     f"{self.log_tail()}")
            time.sleep(0.25)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernel_state(self) -> str | None:
        """The execution state of the notebook's kernel (None until there is one)."""
        for session in self.api("sessions"):
            if session["path"].endswith(NOTEBOOK) and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None

    def note_children(self) -> None:
        """Remember the server's descendants (its kernel runs in a session of its own)."""
        import psutil

        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    self.children.setdefault(child.pid, child)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- server log (last lines) ---\n" + "\n".join(text)

    def stop(self) -> list[int]:
        """Shut kernels down, terminate the server (kill it if it lingers); the pids of
        descendants that outlived it (ended here)."""
        import psutil

        if self.proc is None:
            return []
        self.note_children()
        with contextlib.suppress(OSError, ValueError):
            for kernel in self.api("kernels"):
                self.api(f"kernels/{kernel['id']}", method="DELETE")
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # The kernel leaves with the server (it watches its parent); give it a moment,
        # then end whatever is still there and report it.
        _, alive = psutil.wait_procs(list(self.children.values()), timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        return sorted(child.pid for child in alive)


# -- reading the page ------------------------------------------------------------------

MONITOR = ".offsetlab-test-monitor"
COMPARE_WIDGET = ".offsetlab-test-compare"

# Points of the monitor's first curve: plotly draws a line as one SVG path "M x,y L x,y ...".
CURVE_POINTS = """(sel) => {
  const path = document.querySelector(sel + ' .scatterlayer .trace path.js-line');
  return path ? (path.getAttribute('d') || '').split(/[ML]/).filter(s => s.trim()).length : 0;
}"""

# Record every (label text, curve points) the monitor shows, as the page changes.
RECORD_MONITOR = """(sel) => {
  const points = CURVE_POINTS;
  const states = window.offsetlabMonitorStates = [];
  const read = () => {
    const root = document.querySelector(sel);
    if (!root) return;
    const label = root.querySelector('.widget-html-content');
    const state = {t: Math.round(performance.now()), text: label ? label.innerText : '',
                   points: points(sel)};
    const last = states[states.length - 1];
    if (!last || last.text !== state.text || last.points !== state.points) states.push(state);
  };
  new MutationObserver(read).observe(document.body, {subtree: true, childList: true,
    characterData: true, attributes: true, attributeFilter: ['d']});
}""".replace("CURVE_POINTS", CURVE_POINTS)


def parse_step(text: str) -> tuple[int, int] | None:
    """(step, steps) from the monitor's label, e.g. "step 3/20 · loss ..."."""
    found = re.search(r"step (\d+)/(\d+)", text)
    return (int(found[1]), int(found[2])) if found else None


def answers(page) -> tuple[str, str]:
    """(base, fused) answers as the page shows them: the token boxes' text, joined."""
    columns = page.locator(f"{COMPARE_WIDGET} .offsetlab-answers .answer")
    texts = []
    for i in range(2):
        tokens = columns.nth(i).locator(".tok").all_inner_texts()
        texts.append("".join(tokens))
    return texts[0], texts[1]


def errors_shown(page) -> list[str]:
    """Tracebacks and stderr the notebook's cells printed."""
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                        ).all_inner_texts()


def artifacts() -> Path:
    folder = Path(os.environ.get("OFFSETLAB_ARTIFACTS") or REPO / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(locator, name: str) -> Path:
    path = artifacts() / name
    locator.screenshot(path=str(path))
    return path


def watch_training(page, context) -> list[tuple[int, int]]:
    """Wait for the monitor's last step; (step, curve points) of the states shown before.

    The page records every state the monitor shows (a poll from here could miss steps
    while the browser is busy drawing); this loop only waits for the end and photographs
    the monitor once a third of the steps are done.
    """
    page.evaluate(RECORD_MONITOR, MONITOR)
    shot_taken = False
    deadline = time.monotonic() + 150
    while True:
        states = page.evaluate("() => window.offsetlabMonitorStates")
        steps_seen = [parse_step(s["text"]) for s in states]
        current = next((st for st in reversed(steps_seen) if st), None)
        if current and current[0] == current[1]:
            break
        if not shot_taken and current and current[0] >= current[1] // 3:
            shoot(page.locator(MONITOR), "jupyterlab_monitor_training.png")
            shot_taken = True
        assert time.monotonic() < deadline, (
            f"training did not finish in the page within 150 s (last monitor states: "
            f"{states[-3:]})" + context())
        page.wait_for_timeout(200)
    if not shot_taken:
        print("note: training ended before the monitor could be photographed mid-run")
    return [(st[0], s["points"]) for s, st in zip(states, steps_seen)
            if st and st[0] < st[1] and s["points"] > 0]


def test_widgets_train_and_compare_in_jupyterlab(tmp_path):
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def mark(phase: str) -> None:
        timings[phase] = time.perf_counter() - t0

    server = LabServer(tmp_path)
    write_notebook(server.root / NOTEBOOK)
    (artifacts() / "jupyterlab_failure.png").unlink(missing_ok=True)  # from an earlier run
    page = None
    page_errors: list[str] = []

    def context() -> str:
        """What a failure message adds: cell stderr, page errors, the server log's tail."""
        shown = ""
        with contextlib.suppress(Exception):
            shown = "\n".join(errors_shown(page))[-3000:]
        return (f"\n--- cell stderr ---\n{shown}\n--- page errors ---\n{page_errors[-5:]}"
                + server.log_tail())

    try:
        server.start()
        mark("server up")
        with chromium_page() as page:
            try:
                page.set_viewport_size({"width": 1280, "height": 2000})
                page.set_default_timeout(60_000)
                page.on("pageerror", lambda e: page_errors.append(str(e)))
                drive(page, server, mark, context)
            except Exception:
                with contextlib.suppress(Exception):  # what the page showed, for the record
                    page.screenshot(path=str(artifacts() / "jupyterlab_failure.png"))
                raise
    finally:
        left = server.stop()
        mark("stopped")
        print("timings (s since start):", ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        if page_errors:
            print("page errors:", page_errors)
    assert not left, f"server processes were still running after the server stopped: {left}"


def drive(page, server: LabServer, mark, context) -> None:
    """Open the notebook, run all cells and check what the widgets show."""
    page.goto(f"{server.url}/lab/tree/{NOTEBOOK}?token={server.token}", wait_until="load")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    # Run All does not wait for a kernel: start once the notebook's kernel is idle.
    deadline = time.monotonic() + 60
    while server.kernel_state() != "idle":
        assert time.monotonic() < deadline, "the notebook's kernel never became idle" + context()
        time.sleep(0.25)
    server.note_children()
    mark("notebook open, kernel idle")

    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()

    # -- the monitor grows while the offset trains --------------------------------------
    during = watch_training(page, context)
    mark("training done")
    print(f"monitor states shown while training (step, curve points): {during}")
    assert len({step for step, _ in during}) >= 2, (
        f"the monitor's step counter did not move while training: {during}" + context())
    (first_step, first_points), (last_step, last_points) = during[0], during[-1]
    assert last_step > first_step and last_points > first_points, (
        f"the loss curve did not grow while training (step, points): {during}" + context())
    # The last step is drawn too (plotly may merge collinear points: at least as many).
    page.wait_for_function(f"() => ({CURVE_POINTS})('{MONITOR}') >= {last_points}",
                           timeout=30_000)

    # -- Compare: base and fused answers differ -----------------------------------------
    compare = page.locator(COMPARE_WIDGET)
    compare.locator(".offsetlab-answers .answer .tok").first.wait_for(timeout=90_000)
    compare.locator(".js-plotly-plot").first.wait_for()
    base, fused = answers(page)
    mark("compare shown")
    assert base and fused, f"empty answers in the page: {base!r}, {fused!r}" + context()
    assert base != fused, (
        f"after {STEPS} steps the fused answer is still the base's: {base!r}" + context())
    assert "part ways at token" in compare.locator(".offsetlab-answers").inner_text()
    shoot(compare, "jupyterlab_compare.png")

    # -- α = 0: the fused model is the base again ---------------------------------------
    slider = compare.locator(".widget-slider", has_text="α").first
    readout = slider.locator(".widget-readout")
    assert readout.inner_text().strip() == "1.00", f"α readout: {readout.inner_text()!r}"
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("0")
    page.keyboard.press("Enter")
    # The fused column's title names its α: wait for the redrawn answers.
    fused_column = compare.locator(".offsetlab-answers .answer").nth(1)
    deadline = time.monotonic() + 60
    while "α = 0)" not in fused_column.inner_text(timeout=5_000):
        assert time.monotonic() < deadline, (
            f"the answers were not redrawn within 60 s of setting α = 0 (readout: "
            f"{readout.inner_text()!r}, fused: {fused_column.inner_text()!r})" + context())
        page.wait_for_timeout(200)
    assert readout.inner_text().strip() == "0.00", f"α readout: {readout.inner_text()!r}"
    after_base, after_fused = answers(page)
    mark("alpha moved")
    assert after_base == base, f"the base answer changed with α: {after_base!r} vs {base!r}"
    assert after_fused != fused and after_fused == base, (
        f"at α = 0 the fused answer should be the base's: {after_fused!r} vs {base!r}"
        + context())
    assert "the answers are identical" in compare.locator(".offsetlab-answers").inner_text()
    # The token strip (the offset's shift at each token) is redrawn for α = 0 too.
    page.wait_for_function(
        "(sel) => { const t = document.querySelector(sel);"
        " return !!t && t.textContent.includes('α = 0'); }",
        arg=f"{COMPARE_WIDGET} .js-plotly-plot .gtitle", timeout=30_000)
    shoot(compare, "jupyterlab_compare_alpha0.png")

    tracebacks = [e for e in errors_shown(page) if "Traceback" in e or "Error" in e]
    assert not tracebacks, f"cells printed errors: {tracebacks}" + context()
    printed = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
    print("the notebook printed:", *printed.all_inner_texts(), sep="\n  ")

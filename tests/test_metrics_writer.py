"""metrics.jsonl, TensorBoard files and the console line: one line rewritten on a terminal,
rate-limited lines in a log file, nothing from processes other than 0."""

import io
import json
import os

from vdit_jax import metrics_writer


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _write_five(workdir, stream, active=True):
  writer = metrics_writer.MetricsWriter(str(workdir), total_steps=5, console_keys=("loss", "ce"),
                                        active=active, stream=stream)
  for step in range(1, 6):
    writer.write(step, {"loss": 10.0 / step, "ce": 0.5, "steps_per_s": 2.0, "lr": 1e-4})
  writer.close()


def test_jsonl_and_tensorboard(tmp_path):
  _write_five(tmp_path, io.StringIO())
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[1] == {"step": 2, "loss": 5.0, "ce": 0.5, "steps_per_s": 2.0, "lr": 1e-4}
  assert [line["step"] for line in lines] == [1, 2, 3, 4, 5]
  events = os.listdir(tmp_path / "tensorboard")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")


def test_log_file_gets_the_first_and_last_lines_only(tmp_path):
  stream = io.StringIO()
  _write_five(tmp_path, stream)
  assert stream.getvalue().splitlines() == [
      "step 1/5 (20.0%) | 2 steps/s | ETA 0m02s | loss 10 ce 0.5",
      "step 5/5 (100.0%) | 2 steps/s | ETA 0m00s | loss 2 ce 0.5"]


def test_terminal_line_is_rewritten_in_place(tmp_path):
  stream = _Terminal()
  _write_five(tmp_path, stream)
  text = stream.getvalue()
  assert text.count("\r\033[K") == 5 and text.count("\n") == 1 and text.endswith("\n")
  assert text.split("\r\033[K")[3] == "step 3/5 (60.0%) | 2 steps/s | ETA 0m01s | loss 3.333 ce 0.5"


def test_other_processes_write_nothing(tmp_path):
  stream = io.StringIO()
  _write_five(tmp_path / "run", stream, active=False)
  assert stream.getvalue() == "" and not (tmp_path / "run").exists()

"""Structured logs: one JSON object per line, with the request, job, dialect and worker."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from sdgate.logs import JsonFormatter, configure_logging, log_context


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("sdgate.test", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_carries_context_and_record_fields() -> None:
    fmt = JsonFormatter()
    with log_context(request_id="req-1", dialect="a1111"):
        line = json.loads(fmt.format(_record("hello \u00e9", job_id="job_1")))
    assert line["message"] == "hello \u00e9"
    assert line["level"] == "INFO" and line["logger"] == "sdgate.test"
    assert (line["request_id"], line["dialect"], line["job_id"]) == ("req-1", "a1111", "job_1")
    assert "worker_id" not in line
    outside = json.loads(fmt.format(_record("after")))
    assert "request_id" not in outside  # the context ended with the block


def test_record_field_wins_over_context_and_context_is_per_thread() -> None:
    fmt = JsonFormatter()
    seen: list[dict[str, object]] = []
    with log_context(job_id="outer"):
        assert json.loads(fmt.format(_record("x", job_id="inner")))["job_id"] == "inner"
        thread = threading.Thread(target=lambda: seen.append(json.loads(fmt.format(_record("t")))))
        thread.start()
        thread.join()
    assert "job_id" not in seen[0]  # a new thread starts with an empty context


def test_exceptions_and_odd_values_never_break_a_line() -> None:
    fmt = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", (object(),), sys.exc_info())
    line = json.loads(fmt.format(record))
    assert "ValueError: boom" in line["exc"] and line["message"].startswith("failed <object")


def test_unknown_context_field_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log context"), log_context(user="x"):
        pass


def test_configure_logging_json_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        with log_context(worker_id="w-1"):
            logging.getLogger("sdgate.worker").info("claimed")
        logging.getLogger("uvicorn.error").info("Started server process")
        lines = [json.loads(x) for x in capsys.readouterr().err.strip().splitlines()]
        assert [x["message"] for x in lines] == ["claimed", "Started server process"]
        assert lines[0]["worker_id"] == "w-1"
        with pytest.raises(ValueError):
            configure_logging("info", "xml")  # type: ignore[arg-type]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def test_a_request_s_log_lines_carry_its_request_id_and_dialect(tmp_path) -> None:  # noqa: ANN001
    import httpx

    from sdgate.server.app import create_app
    from sdgate.settings import Settings
    from tests.harness import ThreadServer

    lines: list[dict[str, object]] = []
    formatter = JsonFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # formatted where it is logged
            lines.append(json.loads(formatter.format(record)))

    handler = Collect(level=logging.INFO)
    server_log = logging.getLogger("sdgate.server")
    saved = server_log.level
    server_log.setLevel(logging.INFO)
    server_log.addHandler(handler)
    try:
        settings = Settings(data_dir=tmp_path, engine="null", models_dir=tmp_path / "models")
        with ThreadServer(create_app(settings)) as server:
            r = httpx.post(server.url + "/sdapi/v1/txt2img", headers={"X-Request-ID": "req-abc"},
                           json={"prompt": "x", "steps": 1, "width": 64, "height": 64}, timeout=30)
            assert r.status_code == 200, r.text
    finally:
        server_log.removeHandler(handler)
        server_log.setLevel(saved)
    queued = [x for x in lines if "queued" in str(x["message"])]
    assert queued and queued[0]["request_id"] == "req-abc" and queued[0]["dialect"] == "a1111", lines

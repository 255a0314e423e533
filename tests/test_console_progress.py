"""The terminal's view of jobs: a tqdm bar per job on stderr, and one line when each ends."""

from __future__ import annotations

import io
import logging

import pytest

from tests.test_service import fake_runner
from webui.generation.console import ConsoleProgress
from webui.generation.requests import GenerationRequest
from webui.generation.service import GenerationService


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def run_jobs():
    services = []

    def run(console: ConsoleProgress, prompts: list[str], steps: int = 6) -> list:
        service = GenerationService(fake_runner(steps=steps), preview_every=0, console=console)
        services.append(service)
        service.start()
        jobs = [service.submit(GenerationRequest(prompt=p, steps=steps), source="test") for p in prompts]
        service.call(lambda: None, timeout=30, label="model switch")  # an action: no bar of its own
        assert all(job.wait(30) for job in jobs)
        return jobs

    yield run
    for service in services:
        service.stop()


def test_each_job_gets_its_own_bar_on_a_terminal_and_a_line_when_it_ends(run_jobs, caplog):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="webui.generation.console"):
        jobs = run_jobs(ConsoleProgress(stream=terminal), ["a fox", "boom", "a cat"])
    drawn = terminal.getvalue()
    assert "txt2img 1" in drawn and "txt2img 2" in drawn and "txt2img 3" in drawn and "txt2img 4" not in drawn
    assert "6/6" in drawn  # the bars follow the job's steps
    lines = [r.getMessage() for r in caplog.records if r.name == "webui.generation.console"]
    assert len(lines) == len(jobs) == 3
    assert lines[0].startswith("txt2img job 1 (test) done: 1 image in") and "6 steps" in lines[0]
    assert lines[1].startswith("txt2img job 2 (test) failed after") and "the pipeline exploded" in lines[1]


def test_no_bar_off_a_terminal_so_logs_and_tests_get_one_line_per_job(run_jobs, caplog):
    log_file = io.StringIO()
    with caplog.at_level(logging.INFO, logger="webui.generation.console"):
        run_jobs(ConsoleProgress(stream=log_file), ["a fox", "a cat"])
    assert log_file.getvalue() == ""
    assert len([r for r in caplog.records if r.name == "webui.generation.console"]) == 2


def test_the_app_shows_its_jobs_on_the_console(tmp_path):
    from tests.app_services import tmp_services

    services = tmp_services(tmp_path)
    assert isinstance(services.generation.console, ConsoleProgress) and services.generation.console.stream is None

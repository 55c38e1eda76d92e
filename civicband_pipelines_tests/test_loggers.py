"""The terminal logger of `civicband` commands, on real in-process Dagster runs."""

import logging
import re

import dagster as dg
from dagster._core.events import JobFailureData
from dagster._utils.error import SerializableErrorInfo

from civicband_pipelines.loggers import terminal_logger


def run_with_terminal_logger(job: dg.JobDefinition) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(run_config={"loggers": {"terminal": {}}}, raise_on_error=False)


def terminal_lines(stderr: str) -> list[str]:
    """The logger's lines without their time (stderr may hold other lines: warnings of other threads)."""
    return [line[9:] for line in stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]


def test_a_step_failure_is_one_line_and_the_run_failure_not_repeated(capsys):
    @dg.op
    def refuses(context: dg.OpExecutionContext):
        context.log.info("syncing oakland.ca/agenda")
        raise dg.Failure(description="no such municipality on civic.band: 'nowhere.zz'")

    job = dg.GraphDefinition("g", node_defs=[refuses]).to_job("refusing", logger_defs={"terminal": terminal_logger})
    result = run_with_terminal_logger(job)
    assert terminal_lines(capsys.readouterr().err) == [
        "syncing oakland.ca/agenda",
        f'ERROR: Execution of step "refuses" failed: no such municipality on civic.band: \'nowhere.zz\' '
        f"(traceback in the logs of run {result.run_id})",
    ]


def test_a_run_that_fails_before_any_step_says_so(capsys):
    @dg.resource
    def unreachable(_):
        raise ConnectionError("the meetings store is unreachable")

    @dg.op(required_resource_keys={"store"})
    def uses_it(_):
        pass

    job = dg.GraphDefinition("g", node_defs=[uses_it]).to_job(
        "needs_a_store", resource_defs={"store": unreachable}, logger_defs={"terminal": terminal_logger})
    result = run_with_terminal_logger(job)
    (line,) = terminal_lines(capsys.readouterr().err)  # the run failure that follows would repeat it
    assert not result.success and re.fullmatch(  # Dagster lists the resources in no fixed order
        r"ERROR: Initialization of resources \[(store, io_manager|io_manager, store)\] failed: ConnectionError: the "
        rf"meetings store is unreachable \(traceback in the logs of run {result.run_id}\)", line), line


def test_a_run_failure_with_no_failure_line_before_it_is_shown():
    # Say the run worker was lost: no step or resource printed a reason. (A record as Dagster builds it.)
    error = SerializableErrorInfo("civicband_pipelines.client.TransientError: HTTP 503\n", [], "TransientError")
    event = dg.DagsterEvent(dg.DagsterEventType.RUN_FAILURE.value, "meeting_pages_job",
                            event_specific_data=JobFailureData(error=error))
    record = logging.LogRecord("civicband", logging.ERROR, __file__, 1, "", (), None)
    record.dagster_meta = {"dagster_event": event, "run_id": "r1", "orig_message": 'Execution of run for "j" failed.'}
    handler = terminal_logger.logger_fn(dg.build_init_logger_context({"log_level": "INFO"})).handlers[0]
    assert handler.filter(record)
    assert handler.format(record)[9:] == ('ERROR: Execution of run for "j" failed: civicband_pipelines.client.TransientError: '
                                         "HTTP 503 (traceback in the logs of run r1)")


def test_a_failure_without_a_description_is_named_by_its_class(capsys):
    @dg.op
    def fails_silently(_):
        raise dg.Failure()

    job = dg.GraphDefinition("g", node_defs=[fails_silently]).to_job("silent", logger_defs={"terminal": terminal_logger})
    result = run_with_terminal_logger(job)
    assert f'failed: Failure (traceback in the logs of run {result.run_id})' in capsys.readouterr().err

"""The terminal logger of `civicband` commands, on real in-process Dagster runs."""

import dagster as dg

from civicband_pipelines.loggers import terminal_logger


def run_with_terminal_logger(job: dg.JobDefinition) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(run_config={"loggers": {"terminal": {}}}, raise_on_error=False)


def test_a_step_failure_is_one_line_and_the_run_failure_not_repeated(capsys):
    @dg.op
    def refuses(context: dg.OpExecutionContext):
        context.log.info("syncing oakland.ca/agenda")
        raise dg.Failure(description="no such municipality on civic.band: 'nowhere.zz'")

    job = dg.GraphDefinition("g", node_defs=[refuses]).to_job("refusing", logger_defs={"terminal": terminal_logger})
    result = run_with_terminal_logger(job)
    lines = capsys.readouterr().err.splitlines()
    assert [line[9:] for line in lines] == [
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
    err = capsys.readouterr().err
    assert not result.success and "Stack Trace" not in err
    assert ('ERROR: Execution of run for "needs_a_store" failed. An exception was thrown during execution: '
            "ConnectionError: the meetings store is unreachable") in err, "a run failure of its own is shown"

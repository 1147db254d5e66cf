"""Manufactoria-Has: the factory DSL (parser, simulator), its grader, the problem generator and the task."""
from resd_jax.tasks.manufactoria.dsl import ParseError, Program, parse
from resd_jax.tasks.manufactoria.grader import extract_code, grade_response
from resd_jax.tasks.manufactoria.simulator import MAX_VISITS, RunResult, run
from resd_jax.tasks.manufactoria.task import ManufactoriaTask, example_from_problem, example_from_row

__all__ = ["MAX_VISITS", "ManufactoriaTask", "ParseError", "Program", "RunResult", "example_from_problem",
           "example_from_row", "extract_code", "grade_response", "parse", "run"]

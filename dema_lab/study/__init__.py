"""The paper's study: the sweep grid and its executors (local processes, Ray), the report with its
verdicts, and the demo.

May import every layer up to training and evaluation.
"""

from dema_lab.study.demo import run_demo
from dema_lab.study.report import Report, build_report, findings
from dema_lab.study.sweep import SweepConfig, grid, run_sweep

__all__ = ["Report", "SweepConfig", "build_report", "findings", "grid", "run_demo", "run_sweep"]

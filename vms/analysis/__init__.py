"""Stream analysis: open/closed state, activity and camera faults from the packets the ingest has.

Entry points: make_analysis_observer_factory (live, inside the ingest workers), analyse_file
(`vms analyze`), StationCalibration (what the API lets an operator PATCH).
"""

from vms.analysis.calibration import StationCalibration, parse_calibration
from vms.analysis.observer import (
    AnalysisObserverFactory,
    StationAnalysisObserver,
    make_analysis_observer_factory,
)
from vms.analysis.sink import AnalysisSink

__all__ = [
    "AnalysisObserverFactory",
    "AnalysisSink",
    "StationAnalysisObserver",
    "StationCalibration",
    "make_analysis_observer_factory",
    "parse_calibration",
]

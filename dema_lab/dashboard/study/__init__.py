"""The study report page: the paper's findings with their verdicts, and the report's tables."""

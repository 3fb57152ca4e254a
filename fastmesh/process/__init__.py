"""The process model: the supervisor, its workers, the control link between them, hot reload, demo backends."""

"""Business rules, split by use case. Functions take the session or unit of work first."""

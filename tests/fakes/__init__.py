"""In-memory implementations of the storage interfaces the actors use (DESIGN section 4): a fake
at the database boundary so actor tests can run under the autojump clock."""

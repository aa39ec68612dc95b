"""Engines draw pictures. They take jobs (plain ints, strings and PIL images) and never see HTTP."""

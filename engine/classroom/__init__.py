"""Classroom mode: assignments with a hidden test split, hand-ins scored once, leaderboards, reproducible bundles."""

"""Classroom accounts: users with a role, who is acting (Actor), and what each may see and do (access)."""

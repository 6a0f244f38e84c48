"""pledgewatch — the one console command and its sub-commands (agent, lender, provision, hil, demo)."""

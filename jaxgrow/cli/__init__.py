"""The cli wing (the top): flags and their table (flags.py), reading a command line and its --config (parsing.py),
dispatch (main.py: parse, call one function of a wing, print), and `plan` (plan.py: AOT sizes, FLOPs and memory).
Owns no domain work. May import every wing; nothing imports it (not even experiments/)."""

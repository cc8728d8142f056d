"""The embedded datasets, generated here: behaviour policies (shipped ARS linear policies for
MuJoCo, scripted ones for Atari), and the builder that rolls them out into D4RL-layout files."""

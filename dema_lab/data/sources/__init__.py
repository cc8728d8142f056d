"""Where datasets come from: D4RL-layout HDF5 files, Minari datasets and DQN-Replay folders, each
read and validated into a TrajectoryDataset."""

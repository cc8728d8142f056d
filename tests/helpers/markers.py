"""The tests marked `slow` (tests/conftest.py adds the marker): each trains or evaluates for more
than about ten seconds on 2 cores (see `pytest --durations=30`). `make test-fast` leaves
them out; `make test` runs them. An entry is a test's node id without its parameters (every
parametrisation is slow) or a file (every test in it is)."""

SLOW = frozenset(
    {
        "tests/analysis/test_paper_attention.py::test_trainer_publishes_it_and_it_reopens_in_a_new_process",
        "tests/benchmarks/test_cuda_check.py::test_cuda_check_dry_run_on_cpu",
        "tests/dashboard/test_dashboards.py::test_comparison_of_dema_dt_and_layouts",
        "tests/data/test_atari_data.py",
        "tests/data/test_data_build.py::test_other_envs_rise_from_random_to_medium_to_expert",
        "tests/evaluation/test_ablation.py::test_evaluate_ablation_cli_and_completion",
        "tests/integrations/test_export.py::test_train_logs_live_to_tensorboard",
        "tests/models/test_model_options.py::test_train_with_the_official_preset_from_the_cli",
        "tests/store/test_integrity.py::test_a_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over",
        "tests/store/test_remote_store.py::test_publish_after_write_holds_on_s3",
        "tests/study/test_cluster.py::test_ray_sweep_into_s3_survives_a_killed_worker",
        "tests/study/test_study.py::test_demo_trains_a_dt_beside_the_main_run_and_ablates_every_dema_run",
        "tests/study/test_study.py::test_sweep_runs_resumes_skips_and_reports",
        "tests/training/test_atari_train.py::test_train_and_evaluate_a_tiny_atari_dema",
        "tests/training/test_train_store.py::test_a_run_killed_midway_resumes_to_the_same_result",
    }
)


def is_slow(nodeid: str) -> bool:
    """Whether a collected test (its node id, parameters included) is listed in SLOW."""
    return nodeid.split("[", 1)[0] in SLOW or nodeid.split("::", 1)[0] in SLOW

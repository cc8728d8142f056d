"""The tests marked `slow` (tests/conftest.py adds the marker): each trains, evaluates or starts
processes for more than about three seconds on 2 cores (see `pytest --durations=30`). `make test-fast` leaves
them out; `make test` runs them. An entry is a test's node id without its parameters (every
parametrisation is slow) or a file (every test in it is)."""

SLOW = frozenset(
    {
        "tests/training/test_warm_start.py::test_a_kernel_compiled_once_is_loaded_by_the_next_process",
        "tests/training/test_warm_start.py::test_the_scan_kernels_load_from_the_cache_in_a_new_process",
        "tests/ssm/test_perf_paths.py::test_fused_kernel_matches_reference_float64",
        "tests/training/test_train_store.py::test_bad_input_gets_clear_errors",
        "tests/training/test_train_store.py::test_config_file_flags_and_resume_overrides",
        "tests/analysis/test_paper_attention.py::test_surface_is_the_current_tokens_mean_abs_row_at_every_step_from_20",
        "tests/training/test_train_store.py::test_a_live_rollout_is_saved_only_into_a_run_that_no_trainer_writes",
        "tests/models/test_models.py::test_models_learn_a_simple_mapping",
        "tests/models/test_baselines.py::test_checkpoint_round_trip_in_a_new_process",
        "tests/models/test_baselines.py::test_a_baseline_run_trains_evaluates_and_records_without_attention",
        "tests/dashboard/test_dashboards.py::test_the_demo_child_dies_with_the_server_however_it_dies",
        "tests/study/test_cluster.py::test_local_pool_gives_each_worker_its_gpu",
        "tests/dashboard/test_live_security.py::test_serve_port_in_use_in_a_process_prints_one_line",
        "tests/dashboard/test_demo_job.py::test_a_spawned_demo_child_dies_with_the_server_however_it_dies",
        "tests/integrations/test_export.py::test_export_tensorboard_again_replaces_the_previous_export",
        "tests/data/test_data_ars.py::test_short_training_run_improves_and_writes_loadable_weights",
        "tests/training/test_train_store.py::test_tiny_run_trains_evaluates_logs_and_reopens_in_a_new_process",
        "tests/training/test_train_store.py::test_rollout_contents_are_consistent",
        "tests/store/test_store_recovery.py::test_on_s3_a_killed_delete_is_finished_and_a_missing_index_rebuilt",
        "tests/training/test_train_store.py::test_a_reader_polling_while_a_writer_appends_and_rewrites_sees_only_whole_groups",
        "tests/ssm/test_perf_paths.py::test_fused_kernel_options_and_gradcheck",
        "tests/analysis/test_paper_attention.py::test_trainer_publishes_it_and_it_reopens_in_a_new_process",
        "tests/benchmarks/test_cuda_check.py::test_cuda_check_dry_run_on_cpu",
        "tests/dashboard/test_dashboards.py::test_comparison_of_dema_dt_and_layouts",
        "tests/data/test_atari_data.py",
        "tests/training/test_memory_train.py::test_train_and_evaluate_on_a_memory_task",
        "tests/study/test_cue_finding.py::test_a_tiny_minigrid_run_measures_every_recorded_decision",
        "tests/dashboard/test_memory_dashboards.py",
        "tests/training/test_memory_train.py::test_train_a_pomdp_run_from_the_cli_and_reopen_it_in_a_new_process",
        "tests/data/test_data_build.py::test_other_envs_rise_from_random_to_medium_to_expert",
        "tests/evaluation/test_ablation.py::test_evaluate_ablation_cli_and_completion",
        "tests/evaluation/test_explain_runs.py",
        "tests/dashboard/test_explain_dashboard.py",
        "tests/integrations/test_export.py::test_train_logs_live_to_tensorboard",
        "tests/integrations/test_policy_export.py::test_run_refusals_and_the_cli",
        "tests/dashboard/test_live_export.py::test_browser_live_export_button_downloads_the_policy",
        "tests/integrations/test_policy_export.py::test_example_plays_hopper_with_dema_labs_return",
        "tests/integrations/test_policy_export.py::test_example_plays_pong_greedily_as_dema_lab_does",
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

"""The per-stage split `mlops-assets run` prints: start-up, jobs with their steps slowest first, rest, total."""

from mlops_assets.cli import format_stage_split


def test_split_lists_steps_slowest_first_and_the_unaccounted_rest() -> None:
    jobs = [("ingestion_job", 14.0, [("weather", 3.9), ("flights", 9.9)]),
            ("continuous_training_job", 20.0, [("training_set", 2.0), ("candidate_model", 12.5)])]
    lines = format_stage_split(jobs, startup=6.0, total=41.25).splitlines()
    assert [line.split()[0] for line in lines] == [
        "Seconds", "start-up", "ingestion_job", "flights", "weather", "continuous_training_job",
        "candidate_model", "training_set", "other", "total"]
    assert lines[3].startswith("    flights") and lines[2].startswith("  ingestion_job")
    assert [line.split()[-1] for line in lines[1:]] == ["6.0", "14.0", "9.9", "3.9", "20.0", "12.5", "2.0",
                                                        "1.2", "41.2"]
    assert len({len(line) for line in lines[1:]}) == 1  # one column of seconds


def test_split_without_steps_still_shows_start_up_and_total() -> None:
    lines = format_stage_split([("ingestion_job", 1.0, [])], startup=0.5, total=2.0).splitlines()
    assert lines[-1].split() == ["total", "2.0"] and lines[-2].split()[-1] == "0.5"

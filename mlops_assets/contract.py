"""Names shared by producers and consumers of frames (training set, prediction log, batch scores).

Importing these instead of repeating string literals keeps the stages from parsing each
other's layouts. No Dagster, no training code: serving imports this too.
"""

from __future__ import annotations

SPLIT = "split"                    # train / validation / test
PERIOD = "period"                  # label of the row's period at the split granularity (2013-11, 2013-W05, 2013-11-05)
PREDICTION_TIME = "prediction_time"  # UTC; every feature is computed as of this moment
SPLITS = ("train", "validation", "test")
EVENT_TS_SUFFIX = "__known_at"     # <view>__known_at: newest event used for a row (freshness, audits)

# A prediction-log record (one JSON line per scored instance; refusals carry status/error only):
# request_id, instance, timestamp, endpoint, status, arm, model_name, model_version, latency_ms,
# inputs (the request fields), features (model inputs by name), prediction_time (ISO, UTC),
# prediction (binary: probability; regression: value; multiclass: predicted class),
# probability + decision (binary), probabilities (multiclass: class -> probability), missing_features.
LOG_PREDICTION = "prediction"
LOG_INPUTS = "inputs"
LOG_FEATURES = "features"

# The registered-model tag holding the challenger's traffic share while a rollout runs (set by
# rollout/registry_steps.py, followed by the service's registry watcher without a restart).
ROLLOUT_SHARE_TAG = "rollout.challenger_share"

"""LoRA sweep of stage 3 on Ray Tune: rank x learning rate (or any stage-3 field), ASHA on validation loss,
every trial a real Ray Train run, tracked in MLflow, the best adapter registered with the alias `champion`.

Run as:
    python jobs/tune.py --config tune_configs/lora_sweep_tiny.yaml [name=my-sweep max_steps=8]
    ray job submit --working-dir . -- python jobs/tune.py --config tune_configs/lora_sweep_7b.yaml ray.address=auto
"""

import sys

from vidrip.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))

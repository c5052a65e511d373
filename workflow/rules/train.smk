# Residual 3D U-Net DDPM (or the model's objective and representation), one rule for every model: the main
# one and each variant, under {results}/models/{model}/. Launched with Accelerate (ctdiff.launch): one
# process per GPU of the job, CPU when none; with resources nodes > 1 on SLURM, one launcher per node through
# srun. Resumable state lives in {results}/models/{model}/train_state/, never a declared output.


rule train:
    input:
        train=f"{R}/splits/train.txt",
        volumes=preprocessed,
        nodules=lambda wildcards: nodule_inputs(MODELS[wildcards.model]),
    output:
        model=f"{M}/train/model.pt",
        log=report(f"{M}/train/log.csv", caption="../report/learning_curve.rst", category="Training",
                   subcategory="{model}"),
    params:
        srun=srun,
        volumes=f"{R}/preprocessed",
        state=f"{M}/train_state",
        tensorboard=f"{M}/logs/tensorboard",
        settings=lambda wildcards: train_settings(MODELS[wildcards.model]),
        conditions=lambda wildcards: train_condition_options(MODELS[wildcards.model]),
    threads: 8  # capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{M}/logs/train.log",
    conda:
        ENV
    shell:
        "{params.srun}\"${{CTDIFF_PYTHON:-python}}\" -m ctdiff.launch --gpus {resources.gpu} --threads {threads} -- -m ctdiff.cli train"
        " --train-list {input.train} --volumes {params.volumes} --state {params.state}"
        " --settings {params.settings:q} {params.conditions} --out {output.model} --log-csv {output.log}"
        " --tensorboard-dir {params.tensorboard} > {log} 2>&1"

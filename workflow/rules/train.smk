# Residual 3D U-Net DDPM, launched with Accelerate (ctdiff.launch): one process per GPU of the job, CPU when
# none; with resources nodes > 1 on SLURM, one launcher per node through srun.
# Resumable state lives in {results}/train_state/, never a declared output.


rule train:
    input:
        train=f"{R}/splits/train.txt",
        volumes=preprocessed,
        nodules=lambda wildcards: nodule_inputs(CFG),
    output:
        model=f"{R}/train/model.pt",
        log=report(f"{R}/train/log.csv", caption="../report/learning_curve.rst", category="Training"),
    params:
        srun=srun,
        volumes=f"{R}/preprocessed",
        state=f"{R}/train_state",
        tensorboard=f"{R}/logs/tensorboard",
        settings=lambda wildcards: train_settings(CFG),
        conditions=train_condition_options(CFG),
    threads: 8  # capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{R}/logs/train.log",
    conda:
        ENV
    shell:
        "{params.srun}\"${{CTDIFF_PYTHON:-python}}\" -m ctdiff.launch --gpus {resources.gpu} --threads {threads} -- -m ctdiff.cli train"
        " --train-list {input.train} --volumes {params.volumes} --state {params.state}"
        " --settings {params.settings:q} {params.conditions} --out {output.model} --log-csv {output.log}"
        " --tensorboard-dir {params.tensorboard} > {log} 2>&1"

# The blinded reader study (visual Turing test): a folder readers open from disk, its key kept apart, and the
# analysis of the answer files they send back (reader_study.answers, read anew at every run).


rule reader_study:
    input:
        test=f"{R}/splits/test.txt",
        real=preprocessed,
        synthetic=SAMPLES,
    output:
        # The study folder is not a declared output: Snakemake would stamp a directory() output with a
        # .snakemake_timestamp file holding the real time. write_study replaces it whole, and it holds the
        # same files as study.zip, which carries the rule's time.
        zip=f"{R}/reader/study.zip",
        key=f"{R}/reader/key.json",
    params:
        folder=lambda w, output: output.zip.removesuffix(".zip"),  # <results>/reader/study
        reader_study=study_settings(CFG),
        hu_window=list(CFG.preprocess.hu_window),
        volumes=f"{R}/preprocessed",
    log:
        f"{R}/logs/reader_study.log",
    conda:
        ENV
    script:
        "../scripts/reader_study.py"


rule reader_analysis:
    input:
        key=f"{R}/reader/key.json",
        answers=answer_files(CFG),
    output:
        json=f"{R}/reader/analysis.json",
        cases=f"{R}/reader/cases.tsv",
        readers=f"{R}/reader/readers.tsv",
    params:
        folder=answers_folder(CFG),
        level=CFG.evaluate.ci_level,  # the run's interval level
    log:
        f"{R}/logs/reader_analysis.log",
    conda:
        ENV
    script:
        "../scripts/reader_analysis.py"

"""The blinded reader study (visual Turing test): ``study`` writes the folder readers open and its key,
``answers`` reads what they send back, ``stats`` and ``analysis`` score it, ``section`` puts it in the report."""

"""leantrain advise: which techniques speed up your model, measured here."""

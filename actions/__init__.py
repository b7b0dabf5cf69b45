"""rasa-sdk actions: thin adapters from a Rasa tracker to clinicbot flows."""

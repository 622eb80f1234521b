"""Human feedback: campaigns, the rater app, the feedback store, statistics and exports to TRL datasets."""

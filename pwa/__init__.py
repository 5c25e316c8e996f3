"""The approver app's static files, shipped inside the distribution as package data."""

"""Sending a job's DICOM series to its tenant's PACS after the job succeeded, retried like webhooks."""

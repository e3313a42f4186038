"""Files in and out: video and image reading, masks, writers, reports, safe files and pickles."""

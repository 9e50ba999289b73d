"""geo-locate-ml: predict where a street-level photo was taken."""

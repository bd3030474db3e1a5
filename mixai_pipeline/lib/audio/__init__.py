"""Reading and writing audio through ffmpeg (every upload format) and soundfile."""

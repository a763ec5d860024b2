"""The script every golden manifest ships: its bytes are in the goldens (bundle and sha256), so keep it as it is."""
print("golden")

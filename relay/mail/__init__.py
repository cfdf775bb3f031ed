"""Mail: what the relay writes into messages (render, markers, signing) and mail of its own."""

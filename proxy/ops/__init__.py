"""Operations: `/status`, gauges and operator commands, built from the gate's public views."""

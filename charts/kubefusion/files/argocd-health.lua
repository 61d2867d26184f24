-- placeholder
hs = {status = "Progressing", message = ""}
return hs

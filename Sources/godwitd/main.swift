print("godwitd")
